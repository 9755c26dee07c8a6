// A persistent thread pool that runs one MoE job at a time in the background.
// submit() hands the job to the driver thread and returns; sync() waits for it. Inside a job,
// parallel_for() splits a phase into units taken from an atomic counter by every pool thread.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

class Pool {
  public:
    using UnitFn = std::function<void(int unit, int thread)>;

    // num_nodes > 1: the threads are split into that many groups of consecutive threads (NUMA nodes,
    // real or virtual), thread t in group t * num_nodes / num_threads; with real_node_cpus (one CPU
    // list per node) each group is pinned to its node's CPUs.
    explicit Pool(int num_threads, int num_nodes = 1, const std::vector<std::vector<int>>& real_node_cpus = {});
    ~Pool();
    int size() const { return num_threads_; }
    int nodes() const { return num_nodes_; }

    void submit(std::function<void()> job);  // returns at once; the driver thread runs the job
    void sync();                              // waits until the submitted job has finished
    bool is_done();                           // whether the submitted job has finished (no wait)
    void run(const std::function<void()>& job);  // runs a job in the calling thread, helpers joining
    // After run(): helpers spin for a while (kSpins) before they sleep, or sleep at once.
    void set_linger(bool on) { linger_ = on; }
    // Wakes sleeping helpers ahead of a job (they spin until its first phase): a futex wake-up
    // takes tens of microseconds, which then pass while the caller prepares the job.
    // cancel_wake() lets them sleep again when no job follows.
    void wake();
    void cancel_wake() { in_job_ = false; }
    // Only from inside a job. node_first (nodes() + 1 entries, or null) gives each node a range of
    // units, [node_first[k], node_first[k + 1]): a node's threads take its units first (their
    // weights live on that node) and help the other nodes only once their own are all taken.
    // by_thread (one node only): each thread a contiguous range of the units, taken front to back
    // (its next unit known, so its prefetches run on into it), then the other threads' remaining
    // ones; with several nodes, or fewer units than threads, the same as without.
    void parallel_for(int num_units, const UnitFn& fn, const int* node_first = nullptr, bool by_thread = false);
    // The unit the calling thread's next claim in the current phase would get (past its node's
    // range: none left there); a guess, as another thread may claim it first.
    int next_unit() const;

  private:
    void driver_loop();
    void helper_loop(int thread);
    void work(int thread, uint32_t generation);
    bool claim(int node, uint32_t generation, int* unit);

    enum { kMaxNodes = 16 };
    int num_threads_, num_nodes_;
    std::vector<std::thread> threads_;
    // the job handed from submit() to the driver
    std::mutex job_mutex_;
    std::condition_variable job_cv_;
    std::function<void()> job_;
    bool has_job_ = false, is_job_done_ = true, is_stopping_ = false;
    // The phase currently split across threads. `state_` packs (phase generation << 32 | next unit),
    // so a helper that wakes late can never take a unit of a later phase with a stale function; the
    // driver waits for units done, not for helpers, so a sleeping helper never delays a phase.
    std::mutex phase_mutex_;
    std::condition_variable phase_cv_;
    std::atomic<uint64_t> state_{0};
    std::atomic<int> units_done_{0};
    std::atomic<bool> in_job_{false};
    bool linger_ = false;
    uint64_t wake_seq_ = 0;  // guarded by phase_mutex_
    int num_units_ = 0;
    const UnitFn* fn_ = nullptr;
    // Per range of the phase (a node's, or a thread's with by_thread), as state_: (generation << 32 |
    // next unit), and the end of its range (written before the generation that makes it valid is
    // published); ranges_ of them.
    enum { kMaxRanges = 256 };
    std::atomic<uint64_t> node_state_[kMaxRanges];
    int node_end_[kMaxRanges] = {0};
    std::atomic<int> ranges_{1};
};
