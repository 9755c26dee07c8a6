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

    explicit Pool(int num_threads);
    ~Pool();
    int size() const { return num_threads_; }

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
    void parallel_for(int num_units, const UnitFn& fn);  // only from inside a job
    // The unit the next claim in the current phase would get (num_units or more: none left); a
    // guess, as another thread may claim it first.
    int next_unit() const { return (int)(uint32_t)state_.load(std::memory_order_relaxed); }

  private:
    void driver_loop();
    void helper_loop(int thread);
    void work(int thread, uint32_t generation);

    int num_threads_;
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
};
