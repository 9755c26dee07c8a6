// Q4_K and Q5_K against one token (decode), the rows' blocks taken in address order in groups of 4.
// Included by kernels_avx512_k.cpp after KQ45; internal linkage, no C++ library (common.h).
//
// Why: the per-row kernel (rows_k_tile) decodes each block's 6-bit scales and mins, its fp16 d and
// dmin, and its mins' correction alone, in 128-bit registers: about 40% of its time at one token (a
// copy of its loop in cache, Zen 4: 19.7 cycles a block, 11 without those steps). Here lane k of one
// vector holds block k of a group: one decode serves 4 blocks, the mins' correction of the 4 is one
// vpmaddwd against their activation sums, and d x d_a, dmin x d_a are one multiply. Per block there
// remain the code chunks, their dots, one scale broadcast (from memory: a vector permute per block
// cost 1.4 cycles) and one multiply-add. Q4_K reads its activations in the order of lanes_dot
// (below), which applies a block's 8 scales with one pack and one multiply-add. A group's mins
// leave the row's sums by one masked subtraction per row it touches, not one a block.
// The blocks of consecutive rows lie back to back, so a group may span rows (a row of 768 weights is
// 3 blocks): the activations' per-unit values are copied once per call with unit j % U at j, j < U + 3
// (repeated_units, common.h), so a group starting at any unit reads its 4 contiguously, and the
// row's sum is stored when its last block is done. Decode steps on Zen 4 (docs/dense.md): 7-9%
// faster than the per-row kernel where the bus is quiet, 3-5% slower where it is busy (cause not
// found). On Zen 5 6-11% slower: off by default where AVX512's units are full width (common.h).
#pragma once

namespace {

thread_local ScratchBuffer t_kq45;  // per thread: repeated_units' values (common.h)

// int16 lanes with the scale bytes j of chunks c, c + 1 of a block (its 128-bit lane of `sc` holds 8
// scale bytes, then 8 min bytes), zero-extended (index 0x80), in scales_pair's arrangement (KQ45)
template <class F>
inline __m512i scale_bytes_pair(__m512i sc, int c) {
    const auto idx = [](int j) { return (long long)(0x8000800080008000ULL + 0x0001000100010001ULL * (unsigned)j); };
    const int a = F::blk_lo(c), b = F::blk_lo(c + 1), e = F::blk_hi(c), f = F::blk_hi(c + 1);
    return _mm512_shuffle_epi8(sc, _mm512_set_epi64(idx(f), idx(e), idx(f), idx(e), idx(b), idx(a), idx(b), idx(a)));
}

// Lane k: block k's first 16 bytes ([d|dmin, A, B, C]), for the nb blocks from p; lanes past nb
// undefined. In Q4_K_G4 the 4 lie side by side at the group's start: one aligned load.
template <int kBytes, bool kG4>
inline __m512i group_raw(const uint8_t* p, int nb) {
    if (kG4) return _mm512_load_si512((const void*)p);
    __m512i h = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)p));
    if (nb > 1) h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i*)(p + kBytes)), 1);
    if (nb > 2) h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i*)(p + 2 * kBytes)), 2);
    if (nb > 3) h = _mm512_inserti32x4(h, _mm_loadu_si128((const __m128i*)(p + 3 * kBytes)), 3);
    return h;
}

// Lane k: block k's 8 scales then 8 mins as bytes, from its first 16 bytes in lane k of h (the
// layout KQ45Scales::load unpacks, there one block at a time)
inline __m512i group_headers(__m512i h) {
    const __m512i v = _mm512_shuffle_epi32(h, (_MM_PERM_ENUM)0x39);  // [A, B, C, d|dmin]
    // scales = [A & 63 | (C & 15) + (A >> 6 << 4)], mins = [B & 63 | (C >> 4) + (B >> 6 << 4)]
    const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi8(63));
    const __m512i c = _mm512_srlv_epi32(_mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0xAA), _mm512_set4_epi32(0, 0, 4, 0));
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_and_si512(c, _mm512_set1_epi8(15)), _mm512_srli_epi32(v, 2),
                                                 _mm512_set1_epi8(0x30), 0xF8);  // A | (B & C)
    return _mm512_unpacklo_epi32(lo, hi);
}

// Of a group: sd[2k] = d_k d_a, sd[2k + 1] = dmin_k d_a (block k's fp16 pair is dword 0 of lane k of
// raw); returns the mins' correction, lanes 4k..4k+3 block k's 8 mins (bytes 8-15 of lane k of sc, as
// int16) x its 8 activation sums of 32 (bk), x dmin_k d_a
inline __m512 group_scales(__m512i raw, __m512i sc, const float* dk, const int16_t* bk, float* sd) {
    const __m512i firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    const __m128i dd16 = _mm512_castsi512_si128(_mm512_permutexvar_epi32(firsts, raw));
    const __m256 da2 = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(dk)),
                                                _mm256_set_epi32(3, 3, 2, 2, 1, 1, 0, 0));
    const __m256 sd8 = _mm256_mul_ps(_mm256_cvtph_ps(dd16), da2);
    _mm256_store_ps(sd, sd8);
    const __m512i m16 = _mm512_shuffle_epi8(sc, _mm512_set4_epi32((int)0x800f800e, (int)0x800d800c,
                                                                  (int)0x800b800a, (int)0x80098008));
    const __m512 msc = _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1),
                                             _mm512_castps256_ps512(sd8));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(m16, _mm512_loadu_si512((const void*)bk))), msc);
}

// lane k of v in all four (k a constant once the caller's loop is unrolled)
inline __m512i lane_everywhere(__m512i v, int k) {
    return k == 0 ? _mm512_shuffle_i32x4(v, v, 0x00) : k == 1 ? _mm512_shuffle_i32x4(v, v, 0x55)
         : k == 2 ? _mm512_shuffle_i32x4(v, v, 0xAA) : _mm512_shuffle_i32x4(v, v, 0xFF);
}

// Q5_K: block k's integer dot, its sub-block scales applied, from the paired activations ak
template <class F>
inline __m512i paired_dot(const uint8_t* blk, __m512i sc, int k, const int8_t* ak) {
    const __m512i sck = lane_everywhere(sc, k);
    F f;
    f.point(blk);
    __m512i dot = _mm512_setzero_si512();
    for (int c = 0; c < 4; c += 2) {  // as rows_k_tile's kPackPairs step
        const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), f.chunk(c),
                                               _mm512_loadu_si512((const void*)(ak + 64 * c)));
        const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), f.chunk(c + 1),
                                               _mm512_loadu_si512((const void*)(ak + 64 * c + 64)));
        dot = _mm512_dpwssd_epi32(dot, _mm512_packs_epi32(p0, p1), scale_bytes_pair<F>(sck, c));
    }
    return dot;
}

// Q4_K: the same from the lanes copy al ([X lo, Y lo, X hi, Y hi], kernels_avx512.cpp). The codes'
// 128-bit quarters are regrouped (X: bytes 0-15, 32-47, 64-79, 96-111; Y: the others) so that lane j
// of both holds sub-block 2j (low nibbles) and 2j + 1 (high): the two dot products of a sub-block
// then add in int32 (at most 8 x 15 x 127), and one pack and one multiply-add by the scales (sidx:
// scw's words [2j] x 4, [2j + 1] x 4 in lane j) serve the block, where the paired path takes two of
// each and a lane broadcast (Zen 4, in cache: 16.1 -> 14.7 cycles a block with the high nibbles
// below). The high nibbles are masked in place (x 16) and the sum shifted back: one op, not two.
inline __m512i lanes_dot_xy(__m512i X, __m512i Y, __m512i scw, __m512i sidx, const int8_t* al) {
    const __m512i lo4 = _mm512_set1_epi8(0x0F), hi4 = _mm512_set1_epi8((char)0xF0);
    __m512i lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(X, lo4), _mm512_loadu_si512((const void*)al));
    lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(Y, lo4), _mm512_loadu_si512((const void*)(al + 64)));
    __m512i hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(X, hi4),
                                     _mm512_loadu_si512((const void*)(al + 128)));
    hi = _mm512_dpbusd_epi32(hi, _mm512_and_si512(Y, hi4), _mm512_loadu_si512((const void*)(al + 192)));
    return _mm512_madd_epi16(_mm512_packs_epi32(lo, _mm512_srai_epi32(hi, 4)), _mm512_permutexvar_epi16(sidx, scw));
}
// the file's block at blk: its quarters regrouped in registers (two shuffles a block, which
// Q4_K_G4 stores done)
inline __m512i lanes_dot(const uint8_t* blk, __m512i scw, __m512i sidx, const int8_t* al) {
    const __m512i A = _mm512_loadu_si512((const void*)(blk + 16)), B = _mm512_loadu_si512((const void*)(blk + 80));
    return lanes_dot_xy(_mm512_shuffle_i64x2(A, B, 0x88), _mm512_shuffle_i64x2(A, B, 0xDD), scw, sidx, al);
}

// lanes_dot's sidx for block k of a group
inline __m512i lanes_scale_index(int k) {
    alignas(64) int16_t ix[32];
    for (int j = 0; j < 4; j++)
        for (int i = 0; i < 4; i++) ix[8 * j + i] = (int16_t)(8 * k + 2 * j), ix[8 * j + 4 + i] = (int16_t)(8 * k + 2 * j + 1);
    return _mm512_load_si512((const void*)ix);
}

// kG4: w in Q4_K_G4 (Q4_K on the lanes copy), at a group's start
template <bool kFive, bool kLanes, bool kG4 = false>
int kq45_groups(const uint8_t* w, int nrows, const void* act, int n, float* out) {
    static_assert(!kG4 || (!kFive && kLanes), "Q4_K_G4 is Q4_K on the lanes copy");
    using F = KQ45<kFive>;
    constexpr int B = F::kBytes;
    const int U = n / 256;
    float* dk;
    const int16_t* bk = repeated_units(t_kq45, act_view(act, n), U, 3, &dk);
    if (!bk) return 0;  // the per-row kernel then takes the rows
    // the activations in the order the block dots read them: the paired copy, or the lanes copy
    const int8_t* ordered = (const int8_t*)act + (!kLanes ? paired_at(n) : lanes_at(n));
    const __m512i sidx[4] = {lanes_scale_index(0), lanes_scale_index(1), lanes_scale_index(2), lanes_scale_index(3)};
    const size_t total = (size_t)nrows * U;
    const Ahead fetch(w, total * B, rows_ahead((size_t)U * B, 1));
    __m512 acc = _mm512_setzero_ps();  // the current row's sums
    alignas(64) float done[4][16];  // finished rows' vectors, reduced 4 at a time (hsum4)
    int u = 0, r = 0;
    for (size_t b0 = 0; b0 < total; b0 += 4) {
        const int nb = total - b0 < 4 ? (int)(total - b0) : 4;
        const uint8_t* p = w + b0 * B;
        fetch(p, nb * B);
        const __m512i raw = group_raw<B, kG4>(p, nb);
        const __m512i sc = group_headers(raw);
        alignas(32) float sd[8];  // d_k d_a at 2k, dmin_k d_a at 2k + 1: read back by broadcasts
        const __m512 mins = group_scales(raw, sc, dk + u, bk + 8 * u, sd);
        // sd may have changed (it has not): the blocks then broadcast their scale from memory, a load,
        // where the compiler would otherwise pick it out of the register (two shuffles a block)
        __asm__ volatile("" : "+m"(sd));
        // the mins of the group's blocks [seg, k] leave acc at once where a row ends at block k or
        // the group does: one or two masked subtractions a group, not one a block
        int seg = 0;
        const auto blocks = [](int from, int to) {  // the lanes of blocks from..to of mins
            return (__mmask16)(((1u << (4 * to + 4)) - 1) & ~((1u << (4 * from)) - 1));
        };
        const __m512i scw = _mm512_shuffle_epi8(sc, _mm512_set4_epi32((int)0x80078006, (int)0x80058004,
                                                                      (int)0x80038002, (int)0x80018000));
        for (int k = 0; k < nb; k++) {
            const int8_t* ak = ordered + 256 * u;
            __m512i dot;
            if constexpr (kG4)
                dot = lanes_dot_xy(_mm512_load_si512((const void*)(p + 64 + 128 * k)),
                                   _mm512_load_si512((const void*)(p + 128 + 128 * k)), scw, sidx[k], ak);
            else
                dot = !kLanes ? paired_dot<F>(p + k * B, sc, k, ak) : lanes_dot(p + k * B, scw, sidx[k], ak);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(sd[2 * k]), acc);
            if (++u == U) {
                acc = _mm512_mask_sub_ps(acc, blocks(seg, k), acc, mins);
                _mm512_store_ps(done[r % 4], acc);
                if (++r % 4 == 0)
                    _mm_storeu_ps(out + r - 4, hsum4(_mm512_load_ps(done[0]), _mm512_load_ps(done[1]),
                                                     _mm512_load_ps(done[2]), _mm512_load_ps(done[3])));
                acc = _mm512_setzero_ps();
                u = 0;
                seg = k + 1;
            }
        }
        if (seg < nb) acc = _mm512_mask_sub_ps(acc, blocks(seg, nb - 1), acc, mins);
    }
    for (int i = r / 4 * 4; i < r; i++) out[i] = hsum(_mm512_load_ps(done[i % 4]));
    return nrows;
}

// Q5_K on the paired copy; Q4_K on the lanes copy unless Tuning::kq4_lanes is 0 (an A/B)
template <bool kFive>
int kq45_grouped(const uint8_t* w, int nrows, const void* act, int n, float* out) {
    if (kFive || !g_tuning.kq4_lanes) return kq45_groups<kFive, false>(w, nrows, act, n, out);
    return kq45_groups<false, true>(w, nrows, act, n, out);
}

}  // namespace
