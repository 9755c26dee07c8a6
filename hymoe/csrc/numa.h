// NUMA without duplicated weights (docs/kernels.md, "NUMA"): every routed expert's matrices are split
// by rows across the nodes, the same split for placing their pages (hymoe_numa_bind_rows) and for
// scheduling (a node's pool threads take the work units that start in its rows first). Virtual nodes
// (--numa virtual:N) split one machine's threads the same way, so the scheduling runs anywhere.
#pragma once
#include <stdint.h>

#include <vector>

// The first row of node k's share of a matrix of `rows` rows (rows for k == nodes): whole tiles of
// 16 rows, so a batch tile never straddles two nodes.
static inline int node_first_row(int rows, int node, int nodes) {
    return node >= nodes ? rows : (int)((int64_t)rows * node / nodes) / 16 * 16;
}

// A phase's units per node: the chunks of chunk_rows rows that start in node k's share, for each of
// `groups` matrices (within a node, group-major: unit = group * chunks of the node + chunk).
struct NodeChunks {
    std::vector<int> first_chunk, first_unit;  // nodes + 1 entries each
    NodeChunks(int nodes, int rows, int chunk_rows, int groups) : first_chunk(nodes + 1), first_unit(nodes + 1) {
        for (int k = 0; k <= nodes; k++) {
            first_chunk[k] = (node_first_row(rows, k, nodes) + chunk_rows - 1) / chunk_rows;
            first_unit[k] = groups * first_chunk[k];
        }
    }
    // The group and chunk of a unit (units of node k before node k + 1's).
    void locate(int unit, int* group, int* chunk) const {
        int k = 0;
        while (unit >= first_unit[k + 1]) k++;
        const int local = unit - first_unit[k], per = first_chunk[k + 1] - first_chunk[k];
        *group = local / per;
        *chunk = first_chunk[k] + local % per;
    }
};

// This machine's NUMA nodes that have CPUs the process may run on, with those CPUs; empty where the
// kernel does not say (not Linux, no sysfs).
struct NumaNode {
    int id;
    std::vector<int> cpus;
};
std::vector<NumaNode> numa_nodes();

extern "C" {
int hymoe_numa_nodes();
int hymoe_numa_bind_rows(const uint8_t* base, int experts, int64_t stride, int rows, int64_t row_bytes, int nodes);
}
