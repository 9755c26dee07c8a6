// Portable decoders of IQ3_XXS, IQ3_S and IQ1_M: 4-weight (IQ3) and 8-weight (IQ1_M) codebooks.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

struct PIQ3_XXS {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 32, kBytes = 98;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ3_S {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 32, kBytes = 110;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ1_M {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 16, kBytes = 56;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

}  // namespace
