// IQ1_S helpers shared by the AVX2 and AVX512 kernels and the batch tiles (AVX2 intrinsics only, so
// any file compiled with at least the AVX2 flags may include it). Internal linkage, no C++ library.
//
// IQ1_S is 32 codebook lookups per 256 weights: the lookups, not the arithmetic, bound it. So the
// 11-bit indices are computed in vectors (one pass for all 32, no scalar shifts per lookup) and the
// codebook is kept as codes 0, 1, 2 (grid + 1), which the integer dot products take as they are.
#pragma once
#include <immintrin.h>

#include "common.h"
#include "iq1s_grid.h"

namespace {

// the grid with 1 added to each byte: a carry-free byte add on the 64-bit entries
struct Iq1sCodes {
    uint64_t v[2048];
    constexpr Iq1sCodes() : v() {
        for (int i = 0; i < 2048; i++)
            v[i] = ((kIq1sGrid[i] & 0x7F7F7F7F7F7F7F7FULL) + 0x0101010101010101ULL) ^ (kIq1sGrid[i] & 0x8080808080808080ULL);
    }
};
constexpr Iq1sCodes kIq1sCodes{};

// idx[4j + l] = qs[4j + l] | ((qh[j] >> 3l) & 7) << 8, the index of weights 8(4j + l)..+7, in two
// vectors of 16-bit lanes (groups j 0-3, 4-7): the 3-bit field lands at bit 8 by a multiply (l < 3)
// or a shift (l = 3)
static inline void iq1s_indices(const BlockIQ1_S* b, uint16_t* idx) {
    const __m256i qh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)b->qh));
    const __m256i mul = _mm256_set1_epi64x(0x0001000400200100LL);  // 256, 32, 4, (1)
    const __m256i pick_lo = _mm256_set_epi8(7, 6, 7, 6, 7, 6, 7, 6, 5, 4, 5, 4, 5, 4, 5, 4,
                                            3, 2, 3, 2, 3, 2, 3, 2, 1, 0, 1, 0, 1, 0, 1, 0);
    const __m256i pick_hi = _mm256_add_epi8(pick_lo, _mm256_set1_epi8(8));
    for (int h = 0; h < 2; h++) {
        const __m256i q = _mm256_shuffle_epi8(qh, h ? pick_hi : pick_lo);  // qh[j] in lanes 4j..4j+3
        const __m256i f = _mm256_and_si256(_mm256_blend_epi16(_mm256_mullo_epi16(q, mul), _mm256_srli_epi16(q, 1), 0x88),
                                           _mm256_set1_epi16(0x700));
        const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(b->qs + 16 * h)));
        _mm256_storeu_si256((__m256i*)(idx + 16 * h), _mm256_or_si256(lo, f));
    }
}

// the 8 blocks' scales dl = d * (2 * (qh >> 12 & 7) + 1) and 1 - delta = 0.875 + 0.25 * (qh >> 15)
// (delta is -1/8 where bit 15 is set): value = dl * (grid + delta) = dl * (code - (1 - delta))
static inline void iq1s_scales8(const BlockIQ1_S* b, __m256* dl, __m256* one_minus_delta) {
    const __m256i h32 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)b->qh));
    const __m256i odd = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(h32, 11), _mm256_set1_epi32(14)), _mm256_set1_epi32(1));
    *dl = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), _mm256_cvtepi32_ps(odd));
    *one_minus_delta = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h32, 15)), _mm256_set1_ps(0.25f), _mm256_set1_ps(0.875f));
}

// codes of weights 32j..32j+31 from their four indices: 8-byte loads assembled into one vector
// (Zen 4: faster than four 8-byte stores or a gather)
static inline __m256i iq1s_codes32(const uint16_t* idx4) {
    const uint64_t* g = kIq1sCodes.v;
    uint64_t q;  // the four indices in one load, split by shifts: the loads are what bounds this
    memcpy(&q, idx4, 8);
    return _mm256_set_epi64x((long long)g[q >> 48], (long long)g[(q >> 32) & 0xFFFF], (long long)g[(q >> 16) & 0xFFFF],
                             (long long)g[q & 0xFFFF]);
}

}  // namespace
