// AVX2 decoders of IQ2_XXS, IQ2_XS and IQ2_S: 8 weights per codebook entry, signs apart. The codes
// are v + 128 of the signed weight v = grid * sign, the min 128 * scale (lowbit_iq2_scalar.h).
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "lowbit_iq2_grids.h"
#include "tiles.h"

namespace {

// 32 codes from 4 codebook entries and their 4 sign bytes: a byte's sign bit selected by a
// per-byte bit mask, then v = (g ^ neg) - neg and the code v ^ 0x80 (= v + 128 for |v| < 128)
inline __m256i diq2_codes32(const uint64_t* g, const uint8_t* s) {
    const uint64_t k = 0x0101010101010101ULL;
    const __m256i grid = _mm256_set_epi64x((long long)g[3], (long long)g[2], (long long)g[1], (long long)g[0]);
    const __m256i sb = _mm256_set_epi64x((long long)(s[3] * k), (long long)(s[2] * k), (long long)(s[1] * k),
                                         (long long)(s[0] * k));
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i neg = _mm256_cmpeq_epi8(_mm256_and_si256(sb, bits), bits);
    const __m256i v = _mm256_sub_epi8(_mm256_xor_si256(grid, neg), neg);
    return _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
}

inline void diq2_scale(float d, int s, float* sc, float* mn) {
    *sc = d * (0.5f + (float)s) * 0.25f;
    *mn = 128.f * *sc;
}

inline void diq2_scales16(float d, const uint8_t* scales, float* sc, float* mn, int stride) {
    for (int i = 0; i < 8; i++) {
        diq2_scale(d, scales[i] & 0xF, sc + 2 * i * stride, mn + 2 * i * stride);
        diq2_scale(d, scales[i] >> 4, sc + (2 * i + 1) * stride, mn + (2 * i + 1) * stride);
    }
}

struct DIQ2_XXS {  // PIQ2_XXS: per 32 weights 4 indices, 4 x 7 sign bits and a 4-bit scale
    static const int kBlock = 32, kBytes = sizeof(BlockIQ2_XXS), kMaxCode = 128 + 43;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ2_XXS* b = (const BlockIQ2_XXS*)p;
        const float d = tile_h2f(b->d);
        for (int ib = 0; ib < 8; ib++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * ib, 8);
            const uint8_t* idx = (const uint8_t*)aux;
            uint64_t g[4];
            uint8_t s[4];
            for (int l = 0; l < 4; l++) g[l] = kIq2xxsGrid[idx[l]], s[l] = kIq2Signs[(aux[1] >> (7 * l)) & 127];
            _mm256_storeu_si256((__m256i*)(codes + 32 * ib), diq2_codes32(g, s));
            diq2_scale(d, (int)(aux[1] >> 28), sc + ib * stride, mn + ib * stride);
        }
    }
};

struct DIQ2_XS {  // PIQ2_XS: per 8 weights a 9-bit index and 7 sign bits; 4-bit scales per 16
    static const int kBlock = 16, kBytes = sizeof(BlockIQ2_XS), kMaxCode = 128 + 43;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ2_XS* b = (const BlockIQ2_XS*)p;
        for (int q = 0; q < 8; q++) {
            uint64_t g[4];
            uint8_t s[4];
            for (int l = 0; l < 4; l++) g[l] = kIq2xsGrid[b->qs[4 * q + l] & 511], s[l] = kIq2Signs[b->qs[4 * q + l] >> 9];
            _mm256_storeu_si256((__m256i*)(codes + 32 * q), diq2_codes32(g, s));
        }
        diq2_scales16(tile_h2f(b->d), b->scales, sc, mn, stride);
    }
};

struct DIQ2_S {  // PIQ2_S: per 8 weights a 10-bit index (qs, qh) and 8 sign bits
    static const int kBlock = 16, kBytes = sizeof(BlockIQ2_S), kMaxCode = 128 + 43;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ2_S* b = (const BlockIQ2_S*)p;
        for (int q = 0; q < 8; q++) {
            uint64_t g[4];
            for (int l = 0; l < 4; l++) g[l] = kIq2sGrid[b->qs[4 * q + l] | (((b->qh[q] >> (2 * l)) & 3) << 8)];
            _mm256_storeu_si256((__m256i*)(codes + 32 * q), diq2_codes32(g, b->qs + 32 + 4 * q));
        }
        diq2_scales16(tile_h2f(b->d), b->scales, sc, mn, stride);
    }
};

}  // namespace
