// Portable decoders of IQ2_XXS, IQ2_XS and IQ2_S: 8 weights per codebook entry, signs apart.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

struct PIQ2_XXS {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 32, kBytes = 66;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ2_XS {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 16, kBytes = 74;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ2_S {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 256, kBlock = 16, kBytes = 82;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

}  // namespace
