// AVX2 decoders of Q2_K, Q3_K and IQ4_XS: 256-weight super-blocks with 4- or 6-bit sub-block scales.
// Contract: lowbit.h. AVX2/F16C intrinsics only; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "tiles.h"

namespace {

struct DQ2_K {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 16, kBytes = 84, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DQ3_K {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 16, kBytes = 110, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

struct DIQ4_XS {  // not written yet
    static const bool kReady = false;
    static const int kBlock = 32, kBytes = 136, kMaxCode = 0;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn, int stride) {
        memset(codes, 0, 256);
        for (int j = 0; j < 256 / kBlock; j++) sc[j * stride] = mn[j * stride] = 0.f;
    }
};

}  // namespace
