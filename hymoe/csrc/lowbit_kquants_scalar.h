// Portable decoders of Q2_K, Q3_K and IQ4_XS: 256-weight super-blocks with 4- or 6-bit sub-block scales.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

struct PQ2_K {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 16, kBytes = 84;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PQ3_K {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 16, kBytes = 110;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ4_XS {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 32, kBytes = 136;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

}  // namespace
