// Top-k expert routing from router logits, as layers/router.py computes it (softmax or sigmoid
// scores, DeepSeek's score-correction bias and group limits, normalisation and scaling), for the
// CPU placement's decode steps: one call instead of ~8 torch operations per MoE layer.
#include "route.h"

#include <math.h>

#include <algorithm>
#include <vector>

namespace {

// the k largest of v[0..n) (ties: the lower index first), best first
void top_k(const float* v, int n, int k, int* out) {
    std::vector<int> idx(n);
    for (int i = 0; i < n; i++) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

int route_tokens(const RouteArgs* a) {
    const int E = a->num_experts, K = a->topk, G = a->group_rule ? a->num_groups : 1;
    if (E < 1 || K < 1 || K > E || G < 1 || E % G || a->topk_groups < 1 || a->topk_groups > G) return -1;
    std::vector<float> scores(E), choice(E), group_score(G);
    std::vector<int> picked(K), groups(a->topk_groups);
    for (int t = 0; t < a->num_tokens; t++) {
        const float* x = a->logits + (size_t)t * E;
        if (a->is_sigmoid) {
            for (int e = 0; e < E; e++) scores[e] = 1.f / (1.f + expf(-x[e]));
        } else {
            const float best = *std::max_element(x, x + E);
            float total = 0.f;
            for (int e = 0; e < E; e++) total += scores[e] = expf(x[e] - best);
            for (int e = 0; e < E; e++) scores[e] /= total;
        }
        for (int e = 0; e < E; e++) choice[e] = scores[e] + (a->bias ? a->bias[e] : 0.f);
        if (a->group_rule && G > 1) {
            const int per = E / G;
            for (int g = 0; g < G; g++) {
                int two[2];
                top_k(choice.data() + g * per, per, std::min(2, per), two);
                group_score[g] = choice[g * per + two[0]] + (a->group_rule == 2 && per > 1 ? choice[g * per + two[1]] : 0.f);
            }
            top_k(group_score.data(), G, a->topk_groups, groups.data());
            std::vector<bool> keep(G, false);
            for (int g : groups) keep[g] = true;
            for (int e = 0; e < E; e++)
                if (!keep[e / per]) choice[e] = -INFINITY;
        }
        top_k(choice.data(), E, K, picked.data());
        float total = 0.f;
        for (int k = 0; k < K; k++) total += scores[picked[k]];
        const float norm = a->is_norm ? 1.f / (total + 1e-20f) : 1.f;
        for (int k = 0; k < K; k++) {
            a->ids[(size_t)t * K + k] = picked[k];
            a->weights[(size_t)t * K + k] = scores[picked[k]] * norm * a->scale;
        }
    }
    return 0;
}

extern "C" __attribute__((visibility("default"))) int hymoe_route(const RouteArgs* a) { return route_tokens(a); }
