// AVX2 decoders of IQ3_XXS, IQ3_S and IQ1_M: 4-weight (IQ3) and 8-weight (IQ1_M) codebooks.
// Contract: lowbit.h; codes, scales and mins as their portable decoders (lowbit_iq3_scalar.h).
// AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "iq1s.h"
#include "lowbit.h"
#include "lowbit_iq3_scalar.h"
#include "tiles.h"

namespace {

// 32 sign bits -> 32 byte masks (0xFF where the bit is set): byte i tests bit i of the word
static inline __m256i iq3_sign_mask32(uint32_t s) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)s), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// 32 codes offset +- magnitude from 8 looked-up grid entries (in codes) and their sign bits
static inline void iq3_signed32(uint8_t* codes, uint32_t signs, int offset) {
    const __m256i m = _mm256_loadu_si256((const __m256i*)codes);
    const __m256i o = _mm256_set1_epi8((char)offset);
    const __m256i c = _mm256_blendv_epi8(_mm256_add_epi8(o, m), _mm256_sub_epi8(o, m), iq3_sign_mask32(signs));
    _mm256_storeu_si256((__m256i*)codes, c);
}

struct DIQ3_XXS {  // codes 64 +- grid, scale db, min 64 db (PIQ3_XXS)
    static const bool kReady = true;
    static const int kBlock = 32, kBytes = sizeof(BlockIQ3_XXS), kMaxCode = 126;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ3_XXS* b = (const BlockIQ3_XXS*)p;
        for (int ib = 0; ib < 8; ib++) {
            uint32_t aux;
            memcpy(&aux, b->qs + 64 + 4 * ib, 4);
            for (int k = 0; k < 8; k++) memcpy(codes + 32 * ib + 4 * k, &kIq3xxsGrid[b->qs[8 * ib + k]], 4);
            const uint32_t s = iq3_ksign(aux & 127) | (uint32_t)iq3_ksign((aux >> 7) & 127) << 8 |
                               (uint32_t)iq3_ksign((aux >> 14) & 127) << 16 | (uint32_t)iq3_ksign((aux >> 21) & 127) << 24;
            iq3_signed32(codes + 32 * ib, s, 64);
        }
        const __m256i aux8 = _mm256_loadu_si256((const __m256i*)(b->qs + 64));
        const __m256 ls = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(aux8, 28)), _mm256_set1_ps(0.5f));
        const __m256 db = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(tile_h2f(b->d)), ls), _mm256_set1_ps(0.5f));
        store_scales8(db, _mm256_mul_ps(db, _mm256_set1_ps(64.f)), sc, mn, stride);
    }
};

struct DIQ3_S {  // codes 16 +- grid, scale d (1 + 2 s), min 16 times that (PIQ3_S)
    static const bool kReady = true;
    static const int kBlock = 32, kBytes = sizeof(BlockIQ3_S), kMaxCode = 31;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ3_S* b = (const BlockIQ3_S*)p;
        for (int ib = 0; ib < 8; ib++) {
            for (int k = 0; k < 8; k++)
                memcpy(codes + 32 * ib + 4 * k, &kIq3sGrid[b->qs[8 * ib + k] | ((b->qh[ib] >> k) & 1) << 8], 4);
            uint32_t s;
            memcpy(&s, b->signs + 4 * ib, 4);
            iq3_signed32(codes + 32 * ib, s, 16);
        }
        uint32_t s4;
        memcpy(&s4, b->scales, 4);  // nibble j: block j
        const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)s4), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                             _mm256_set1_epi32(15));
        const __m256 db = _mm256_mul_ps(_mm256_set1_ps(tile_h2f(b->d)),
                                        _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(nib, 1), _mm256_set1_epi32(1))));
        store_scales8(db, _mm256_mul_ps(db, _mm256_set1_ps(16.f)), sc, mn, stride);
    }
};

struct DIQ1_M {  // codes 8 (grid + 1) + 1 + 8 delta, scale dl / 8, min 9 dl / 8 (PIQ1_M)
    static const bool kReady = true;
    static const int kBlock = 16, kBytes = sizeof(BlockIQ1_M), kMaxCode = 18;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ1_M* b = (const BlockIQ1_M*)p;
        for (int g = 0; g < 32; g++) {
            const int nib = (b->qh[g / 2] >> 4 * (g & 1)) & 15;
            // grid + 1 is 0..2 per byte: times 8 by a shift, no carry between bytes
            const uint64_t c = (kIq1sCodes.v[b->qs[g] | (nib & 7) << 8] << 3) + (nib & 8 ? 0 : 0x0202020202020202ULL);
            memcpy(codes + 8 * g, &c, 8);
        }
        const float d = tile_h2f(iq1m_d(b));
        uint16_t w[4];
        memcpy(w, b->scales, 8);
        for (int j = 0; j < 16; j++) {
            sc[j * stride] = d * (float)(2 * ((w[j / 4] >> 3 * (j % 4)) & 7) + 1) * 0.125f;
            mn[j * stride] = 9.f * sc[j * stride];
        }
    }
};

}  // namespace
