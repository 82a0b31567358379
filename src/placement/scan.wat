;; scan.wat: the hot loop of slot placement (src/placement/slots.ts, rankReplicas), with 128-bit SIMD.
;;
;; For one slot key h and every site i, the rendezvous hash x_i = fmix32(h ^ mix[i]) (= combine32(h, siteHash));
;; it returns the sites whose signed-order hash (x_i ^ 2^31) is above gate[i], in site order: their indices in
;; idx[] and their signed-order hashes in val[]. The caller sets the gates so that only a few sites per slot pass
;; (the seeded cut-off) and does everything else in JavaScript, exactly as the JavaScript-only path does: the
;; result is the same placement, bit for bit (test/unit/slots-placement.test.ts compares both paths).
;;
;; Branch-free on purpose: with ~18 of 200 sites passing at random, a branch per group of four lanes was
;; mispredicted so often that it cost as much as the hashing. Passing lanes are moved to the front of a vector by an
;; i8x16.swizzle pattern chosen by the 4-bit lane mask, stored unconditionally at the current end of the output,
;; and the end advances by the number of passing lanes.
;;
;; Memory (one page is enough up to ~4000 sites; the caller grows it): bytes 0..255 hold the 16 swizzle patterns,
;; the caller places mix[], gate[] (4-byte aligned, padded to a multiple of 4 sites: padding gates are 2^31 - 1,
;; which nothing exceeds) and idx[] / val[] (each with 16 bytes of slack for the last unconditional store).
;;
;; Built by scripts/build-wasm.mjs into src/placement/scan-wasm.ts; a unit test checks that the two agree.
(module
  (memory (export "memory") 1)
  ;; Pattern m moves the 32-bit lanes set in m to the front; 0x80 bytes become zero.
  (data (i32.const 0) "\80\80\80\80\80\80\80\80\80\80\80\80\80\80\80\80\00\01\02\03\80\80\80\80\80\80\80\80\80\80\80\80\04\05\06\07\80\80\80\80\80\80\80\80\80\80\80\80\00\01\02\03\04\05\06\07\80\80\80\80\80\80\80\80\08\09\0a\0b\80\80\80\80\80\80\80\80\80\80\80\80\00\01\02\03\08\09\0a\0b\80\80\80\80\80\80\80\80\04\05\06\07\08\09\0a\0b\80\80\80\80\80\80\80\80\00\01\02\03\04\05\06\07\08\09\0a\0b\80\80\80\80\0c\0d\0e\0f\80\80\80\80\80\80\80\80\80\80\80\80\00\01\02\03\0c\0d\0e\0f\80\80\80\80\80\80\80\80\04\05\06\07\0c\0d\0e\0f\80\80\80\80\80\80\80\80\00\01\02\03\04\05\06\07\0c\0d\0e\0f\80\80\80\80\08\09\0a\0b\0c\0d\0e\0f\80\80\80\80\80\80\80\80\00\01\02\03\08\09\0a\0b\0c\0d\0e\0f\80\80\80\80\04\05\06\07\08\09\0a\0b\0c\0d\0e\0f\80\80\80\80\00\01\02\03\04\05\06\07\08\09\0a\0b\0c\0d\0e\0f")
  ;; scan(h, vectors = padded sites / 4, mix, gate, idx, val) -> how many sites passed
  (func (export "scan")
    (param $h i32) (param $n i32) (param $mix i32) (param $gate i32) (param $idx i32) (param $val i32)
    (result i32)
    (local $i i32) (local $base i32) (local $c i32) (local $m i32)
    (local $v v128) (local $hv v128) (local $sh v128) (local $iv v128)
    (local.set $hv (i32x4.splat (local.get $h)))
    (local.set $iv (v128.const i32x4 0 1 2 3))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $base (i32.shl (local.get $i) (i32.const 4)))
        ;; fmix32(h ^ mix[i]), four sites at once
        (local.set $v (v128.xor (local.get $hv) (v128.load (i32.add (local.get $mix) (local.get $base)))))
        (local.set $v (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (i32.const 16))))
        (local.set $v (i32x4.mul (local.get $v) (v128.const i32x4 0x85ebca6b 0x85ebca6b 0x85ebca6b 0x85ebca6b)))
        (local.set $v (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (i32.const 13))))
        (local.set $v (i32x4.mul (local.get $v) (v128.const i32x4 0xc2b2ae35 0xc2b2ae35 0xc2b2ae35 0xc2b2ae35)))
        (local.set $v (v128.xor (local.get $v) (i32x4.shr_u (local.get $v) (i32.const 16))))
        ;; signed order of the unsigned hash
        (local.set $v (v128.xor (local.get $v) (v128.const i32x4 0x80000000 0x80000000 0x80000000 0x80000000)))
        (local.set $m
          (i32x4.bitmask (i32x4.gt_s (local.get $v) (v128.load (i32.add (local.get $gate) (local.get $base))))))
        (local.set $sh (v128.load (i32.shl (local.get $m) (i32.const 4))))
        (v128.store (i32.add (local.get $val) (i32.shl (local.get $c) (i32.const 2)))
          (i8x16.swizzle (local.get $v) (local.get $sh)))
        (v128.store (i32.add (local.get $idx) (i32.shl (local.get $c) (i32.const 2)))
          (i8x16.swizzle (local.get $iv) (local.get $sh)))
        (local.set $c (i32.add (local.get $c) (i32.popcnt (local.get $m))))
        (local.set $iv (i32x4.add (local.get $iv) (v128.const i32x4 4 4 4 4)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $c)))
