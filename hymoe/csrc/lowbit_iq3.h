// AVX2 decoders of IQ3_XXS, IQ3_S and IQ1_M: 4-weight (IQ3) and 8-weight (IQ1_M) codebooks.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "tiles.h"

namespace {

struct DIQ3_XXS {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 98, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ3_S {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 110, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ1_M {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 16, kBytes = 56, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

}  // namespace
