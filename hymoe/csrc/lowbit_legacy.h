// AVX2 decoders of Q4_1, Q5_0, Q5_1 and IQ4_NL: llama.cpp's older 32-weight formats.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "tiles.h"

namespace {

struct DQ4_1 {  // value = d * q + m (PQ4_1), 8 blocks per call
    static const bool kReady = true;
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

struct DQ5_0 {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 176, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DQ5_1 {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 192, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ4_NL {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 144, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

}  // namespace
