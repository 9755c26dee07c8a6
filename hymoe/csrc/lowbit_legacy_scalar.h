// Portable decoders of Q4_1, Q5_0, Q5_1 and IQ4_NL: llama.cpp's older 32-weight formats.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"

namespace {

struct PQ4_1 {  // value = d * q + m, q the low nibbles (weights 0-15) then the high ones (16-31)
    static const int kUnit = 32, kBlock = 32, kBytes = sizeof(BlockQ4_1);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ4_1* b = (const BlockQ4_1*)p;
        for (int i = 0; i < 16; i++) codes[i] = b->qs[i] & 0xF, codes[16 + i] = b->qs[i] >> 4;
        sc[0] = fp16_to_f32(b->d);
        mn[0] = -fp16_to_f32(b->m);
    }
};

// the fifth bit of weight i (0-31) is bit i of qh, a little-endian dword
inline uint32_t q5_high_bits(const uint8_t* qh) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}
inline void q5_codes(const uint8_t* qh, const uint8_t* qs, uint8_t* codes) {
    const uint32_t h = q5_high_bits(qh);
    for (int i = 0; i < 16; i++) {
        codes[i] = (qs[i] & 0xF) | ((h >> i) & 1) << 4;
        codes[16 + i] = (qs[i] >> 4) | ((h >> (16 + i)) & 1) << 4;
    }
}

struct PQ5_0 {  // value = d * (q - 16), q the nibbles of Q4_0's order with a fifth bit from qh
    static const int kUnit = 32, kBlock = 32, kBytes = sizeof(BlockQ5_0);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ5_0* b = (const BlockQ5_0*)p;
        q5_codes(b->qh, b->qs, codes);
        sc[0] = fp16_to_f32(b->d);
        mn[0] = 16.f * sc[0];
    }
};

struct PQ5_1 {  // value = d * q + m, q as Q5_0's
    static const int kUnit = 32, kBlock = 32, kBytes = sizeof(BlockQ5_1);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockQ5_1* b = (const BlockQ5_1*)p;
        q5_codes(b->qh, b->qs, codes);
        sc[0] = fp16_to_f32(b->d);
        mn[0] = -fp16_to_f32(b->m);
    }
};

struct PIQ4_NL {  // value = d * kIQ4Values[q], q in Q4_0's order; code = value + 128 (1-241)
    static const int kUnit = 32, kBlock = 32, kBytes = sizeof(BlockIQ4_NL);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ4_NL* b = (const BlockIQ4_NL*)p;
        for (int i = 0; i < 16; i++) {
            codes[i] = (uint8_t)(kIQ4Values[b->qs[i] & 0xF] + 128);
            codes[16 + i] = (uint8_t)(kIQ4Values[b->qs[i] >> 4] + 128);
        }
        sc[0] = fp16_to_f32(b->d);
        mn[0] = 128.f * sc[0];
    }
};

}  // namespace
