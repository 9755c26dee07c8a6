// AVX2 decoders of Q4_1, Q5_0, Q5_1 and IQ4_NL: llama.cpp's older 32-weight formats.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "tiles.h"

namespace {

struct DQ4_1 {  // value = d * q + m (PQ4_1), 8 blocks per call
    static const int kBlock = 32, kBytes = 8 * sizeof(BlockQ4_1), kMaxCode = 15;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ4_1* b = (const BlockQ4_1*)p;
        for (int j = 0; j < 8; j++) {
            const __m128i q = _mm_loadu_si128((const __m128i*)b[j].qs);
            _mm_storeu_si128((__m128i*)(codes + 32 * j), _mm_and_si128(q, _mm_set1_epi8(0x0F)));
            _mm_storeu_si128((__m128i*)(codes + 32 * j + 16), _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F)));
            sc[j * stride] = tile_h2f(b[j].d);
            mn[j * stride] = -tile_h2f(b[j].m);
        }
    }
};

// the 32 nibbles of a block's qs in k order: the low ones (weights 0-15), then the high ones
inline __m256i legacy_nibbles(const uint8_t* qs) {
    const __m128i q = _mm_loadu_si128((const __m128i*)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}
// 0x10 at byte i where bit i of the little-endian dword at qh is set (Q5_0/Q5_1's fifth bits):
// byte i takes qh's byte i / 8, then tests bit i % 8
inline __m256i legacy_fifth_bits(const uint8_t* qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i pick = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), pick);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}

struct DQ5_0 {  // value = d * (q - 16) (PQ5_0), 8 blocks per call
    static const int kBlock = 32, kBytes = 8 * sizeof(BlockQ5_0), kMaxCode = 31;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ5_0* b = (const BlockQ5_0*)p;
        for (int j = 0; j < 8; j++) {
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_or_si256(legacy_nibbles(b[j].qs), legacy_fifth_bits(b[j].qh)));
            const float d = tile_h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = 16.f * d;
        }
    }
};

struct DQ5_1 {  // value = d * q + m (PQ5_1), 8 blocks per call
    static const int kBlock = 32, kBytes = 8 * sizeof(BlockQ5_1), kMaxCode = 31;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockQ5_1* b = (const BlockQ5_1*)p;
        for (int j = 0; j < 8; j++) {
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_or_si256(legacy_nibbles(b[j].qs), legacy_fifth_bits(b[j].qh)));
            sc[j * stride] = tile_h2f(b[j].d);
            mn[j * stride] = -tile_h2f(b[j].m);
        }
    }
};

struct DIQ4_NL {  // value = d * kIQ4Values[q] (PIQ4_NL), code = value + 128, 8 blocks per call
    static const int kBlock = 32, kBytes = 8 * sizeof(BlockIQ4_NL), kMaxCode = 241;
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn, int stride) {
        const BlockIQ4_NL* b = (const BlockIQ4_NL*)p;
        // value + 128 as a byte is the value's byte with its top bit flipped
        const __m256i table = _mm256_xor_si256(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)kIQ4Values)),
                                               _mm256_set1_epi8((char)0x80));
        for (int j = 0; j < 8; j++) {
            _mm256_storeu_si256((__m256i*)(codes + 32 * j), _mm256_shuffle_epi8(table, legacy_nibbles(b[j].qs)));
            const float d = tile_h2f(b[j].d);
            sc[j * stride] = d;
            mn[j * stride] = 128.f * d;
        }
    }
};

}  // namespace
