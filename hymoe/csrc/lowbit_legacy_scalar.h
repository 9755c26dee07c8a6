// Portable decoders of Q4_1, Q5_0, Q5_1 and IQ4_NL: llama.cpp's older 32-weight formats.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

struct PQ4_1 {  // value = d * q + m, q the low nibbles (weights 0-15) then the high ones (16-31)
    static const bool kReady = true;
    static const int kUnit = 32, kBlock = 32, kBytes = sizeof(BlockQ4_1);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ4_1* b = (const BlockQ4_1*)p;
        for (int i = 0; i < 16; i++) codes[i] = b->qs[i] & 0xF, codes[16 + i] = b->qs[i] >> 4;
        sc[0] = fp16_to_f32(b->d);
        mn[0] = -fp16_to_f32(b->m);
    }
};

struct PQ5_0 {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 32, kBlock = 32, kBytes = 22;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PQ5_1 {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 32, kBlock = 32, kBytes = 24;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

struct PIQ4_NL {  // not written yet
    static const bool kReady = false;
    static const int kUnit = 32, kBlock = 32, kBytes = 18;
    static void decode(const uint8_t*, uint8_t* codes, float* sc, float* mn) {
        memset(codes, 0, kUnit);
        for (int j = 0; j < kUnit / kBlock; j++) sc[j] = mn[j] = 0.f;
    }
};

}  // namespace
