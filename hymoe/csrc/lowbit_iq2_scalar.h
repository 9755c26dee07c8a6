// Portable decoders of IQ2_XXS, IQ2_XS and IQ2_S: 8 weights per codebook entry, signs apart.
// A weight is v = grid * sign (|v| in {8, 25, 43}); it goes in as the code v + 128 with the min
// 128 * scale (value = scale * code - min), the scale d * (0.5 + s) * 0.25 of a 4-bit s.
// Contract: lowbit.h. Plain C++ (the portable path: any CPU).
#pragma once
#include "lowbit.h"
#include "lowbit_iq2_grids.h"

namespace {

// 8 codes of one codebook entry: bit j of signs negates weight j
inline void piq2_group(uint64_t grid, uint8_t signs, uint8_t* codes) {
    for (int j = 0; j < 8; j++) {
        const int g = (int)((grid >> (8 * j)) & 0xFF);
        codes[j] = (uint8_t)((signs >> j) & 1 ? 128 - g : 128 + g);
    }
}

inline void piq2_scale(float d, int s, float* sc, float* mn) {
    *sc = d * (0.5f + (float)s) * 0.25f;
    *mn = 128.f * *sc;
}

// the 4-bit scales of IQ2_XS and IQ2_S: block 2i in the low nibble of byte i, block 2i + 1 in the high
inline void piq2_scales16(float d, const uint8_t* scales, float* sc, float* mn) {
    for (int i = 0; i < 8; i++) {
        piq2_scale(d, scales[i] & 0xF, sc + 2 * i, mn + 2 * i);
        piq2_scale(d, scales[i] >> 4, sc + 2 * i + 1, mn + 2 * i + 1);
    }
}

struct PIQ2_XXS {  // per 32 weights 8 bytes: 4 codebook indices, then 4 x 7 sign bits and a 4-bit scale
    static const int kUnit = 256, kBlock = 32, kBytes = sizeof(BlockIQ2_XXS);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ2_XXS* b = (const BlockIQ2_XXS*)p;
        const float d = fp16_to_f32(b->d);
        for (int ib = 0; ib < 8; ib++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * ib, 8);
            const uint8_t* idx = (const uint8_t*)aux;
            for (int l = 0; l < 4; l++)
                piq2_group(kIq2xxsGrid[idx[l]], kIq2Signs[(aux[1] >> (7 * l)) & 127], codes + 32 * ib + 8 * l);
            piq2_scale(d, (int)(aux[1] >> 28), sc + ib, mn + ib);
        }
    }
};

struct PIQ2_XS {  // per 8 weights a 16-bit word: 9-bit codebook index, 7 sign bits; 4-bit scales per 16
    static const int kUnit = 256, kBlock = 16, kBytes = sizeof(BlockIQ2_XS);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ2_XS* b = (const BlockIQ2_XS*)p;
        for (int g = 0; g < 32; g++) piq2_group(kIq2xsGrid[b->qs[g] & 511], kIq2Signs[b->qs[g] >> 9], codes + 8 * g);
        piq2_scales16(fp16_to_f32(b->d), b->scales, sc, mn);
    }
};

struct PIQ2_S {  // per 8 weights: index bits 0-7 (qs), bits 8-9 (2 per group in qh), 8 sign bits
    static const int kUnit = 256, kBlock = 16, kBytes = sizeof(BlockIQ2_S);
    static void decode(const uint8_t* p, uint8_t* codes, float* sc, float* mn) {
        const BlockIQ2_S* b = (const BlockIQ2_S*)p;
        for (int g = 0; g < 32; g++) {
            const int idx = b->qs[g] | (((b->qh[g / 4] >> (2 * (g % 4))) & 3) << 8);
            piq2_group(kIq2sGrid[idx], b->qs[32 + g], codes + 8 * g);
        }
        piq2_scales16(fp16_to_f32(b->d), b->scales, sc, mn);
    }
};

}  // namespace
