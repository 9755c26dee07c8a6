// AVX2 decoders of IQ2_XXS, IQ2_XS and IQ2_S: 8 weights per codebook entry, signs apart.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "tiles.h"

namespace {

struct DIQ2_XXS {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 66, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ2_XS {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 16, kBytes = 74, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ2_S {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 16, kBytes = 82, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

}  // namespace
