// AVX2 decoders of Q2_K, Q3_K and IQ4_XS: 256-weight super-blocks with 4- or 6-bit sub-block scales.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "lowbit_kquants_scalar.h"  // the scale unpacking (q3k_scale, iq4xs_scale): plain integer code
#include "tiles.h"

namespace {

// the 2-bit planes of Q2_K and Q3_K: 32 bytes of qs hold weights 128h + 32s + i at bits 2s (h: the half)
inline void k_planes2(const uint8_t* qs, uint8_t* codes) {
    for (int h = 0; h < 2; h++) {
        const __m256i q = _mm256_loadu_si256((const __m256i*)(qs + 32 * h));
        for (int s = 0; s < 4; s++)
            _mm256_storeu_si256((__m256i*)(codes + 128 * h + 32 * s),
                               _mm256_and_si256(_mm256_srli_epi16(q, 2 * s), _mm256_set1_epi8(3)));
    }
}

struct DQ2_K {  // value = d * (sc & 15) * q - dmin * (sc >> 4) (PQ2_K)
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static const int kBlock = 16, kBytes = sizeof(BlockQ2_K), kMaxCode = 3;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ2_K* b = (const BlockQ2_K*)p;
        k_planes2(b->qs, codes);
        const float d = tile_h2f(b->d), dmin = tile_h2f(b->dmin);
        for (int j = 0; j < 16; j++) {
            sc[j * stride] = d * (float)(b->scales[j] & 0xF);
            mn[j * stride] = dmin * (float)(b->scales[j] >> 4);
        }
    }
};

// Q3_K's 16 scales, minus 32, as bytes: low nibbles of bytes 0-7 then their high ones, | 2 bits of
// byte 8 + j % 4 at 2 (j / 4) (a dword shift per group of 4; what comes in from the next byte is
// masked off). The 12 bytes are read as 8 + 4 (the block may end the buffer; a copy through memory
// would stall on store forwarding).
inline __m128i q3k_scales16(const uint8_t* scales) {
    int32_t tail;
    memcpy(&tail, scales + 8, 4);
    const __m128i x = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i*)scales), _mm_cvtsi32_si128(tail));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_unpacklo_epi64(_mm_and_si128(x, m4), _mm_and_si128(_mm_srli_epi16(x, 4), m4));
    const __m128i hb = _mm_srlv_epi32(_mm_shuffle_epi8(x, _mm_set1_epi32(0x0B0A0908)), _mm_setr_epi32(0, 2, 4, 6));
    const __m128i sb = _mm_or_si128(lo, _mm_slli_epi16(_mm_and_si128(hb, _mm_set1_epi8(3)), 4));
    return _mm_sub_epi8(sb, _mm_set1_epi8(32));
}

struct DQ3_K {  // value = d * (sc - 32) * (q - 4), code q = 2 low bits | hmask bit << 2 (PQ3_K)
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static const int kBlock = 16, kBytes = sizeof(BlockQ3_K), kMaxCode = 7;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ3_K* b = (const BlockQ3_K*)p;
        // weights 32j..32j+31 (j = 4h + s): bits 2s of qs[32h..] | bit j of hmask[0..31] moved to bit 2
        // per 16-bit lane (no bit crosses a byte: the mask keeps bit 2 of each byte only)
        const __m256i hm = _mm256_loadu_si256((const __m256i*)b->hmask);
        for (int h = 0; h < 2; h++) {
            const __m256i q = _mm256_loadu_si256((const __m256i*)(b->qs + 32 * h));
            for (int s = 0; s < 4; s++) {
                const int j = 4 * h + s;
                const __m256i hi = j < 2 ? _mm256_slli_epi16(hm, 2 - j) : _mm256_srli_epi16(hm, j - 2);
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * s), _mm256_set1_epi8(3));
                _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(4))));
            }
        }
        const __m128i s8 = q3k_scales16(b->scales);
        const __m256 d = _mm256_set1_ps(tile_h2f(b->d));
        alignas(32) float f[16];
        _mm256_store_ps(f, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8))));
        _mm256_store_ps(f + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(s8, s8)))));
        for (int j = 0; j < 16; j++) sc[j * stride] = f[j], mn[j * stride] = 4.f * f[j];
    }
};

struct DIQ4_XS {  // value = d * (ls - 32) * kIQ4Values[q]: code kIQ4Values[q] + 128 by vpshufb (PIQ4_XS)
    static const int kBlock = 32, kBytes = sizeof(BlockIQ4_XS), kMaxCode = 113 + 128;
    static const bool kAct256 = true;  // per-256 activations (lowbit.h)
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ4_XS* b = (const BlockIQ4_XS*)p;
        const __m128i lut = _mm_xor_si128(_mm_loadu_si128((const __m128i*)kIQ4Values), _mm_set1_epi8((char)0x80));
        const __m128i m4 = _mm_set1_epi8(0x0F);
        const float d = tile_h2f(b->d);
        for (int j = 0; j < 8; j++) {
            const __m128i q = _mm_loadu_si128((const __m128i*)(b->qs + 16 * j));
            _mm_storeu_si128((__m128i*)(codes + 32 * j), _mm_shuffle_epi8(lut, _mm_and_si128(q, m4)));
            _mm_storeu_si128((__m128i*)(codes + 32 * j + 16), _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(q, 4), m4)));
            sc[j * stride] = d * (float)iq4xs_scale(b, j);
            mn[j * stride] = 128.f * sc[j * stride];
        }
    }
};

}  // namespace
