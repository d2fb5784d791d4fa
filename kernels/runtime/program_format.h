// The program format: the one binary contract between the Python compiler
// (jax_mpk/program.py mirrors it field by field) and the persistent kernel.
//
// A program blob is, in order, each section 8-byte aligned:
//   ProgramHeader
//   TaskDesc[num_tasks]
//   EventDesc[num_events]
//   uint32_t triggers[num_triggers]      (event ids a task triggers)
//   Operand[num_operands]
//   SlotDesc[num_slots]
//   uint32_t worker_task_begin[num_workers + 1]   (static schedule: list bounds)
//   WorkerTask worker_tasks[num_worker_tasks]      (static schedule: per-worker lists)
//   uint8_t constants[constant_bytes]
//
// The workspace (the last FFI result) begins with the control region laid out
// by ControlLayout; intermediates follow at header.control_bytes.
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MPK_HOST_DEVICE __host__ __device__
#else
#define MPK_HOST_DEVICE
#endif

namespace mpk {

constexpr uint32_t kProgramMagic = 0x4B504D4Au;  // "JMPK", little-endian
constexpr uint32_t kProgramVersion = 2;

constexpr uint32_t kMaxSlots = 1024;          // slot pointers travel as kernel params
constexpr uint32_t kMaxEvents = 1u << 24;     // sched queue entries hold 24-bit event ids
constexpr uint32_t kMaxIterations = 1u << 16; // and 16-bit iteration numbers
constexpr uint32_t kMaxTaskDims = 12;
constexpr uint32_t kSchedulersPerBlock = 4;   // one scheduler per warp
constexpr uint32_t kTerminateTask = 0xFFFFFFFFu;
constexpr uint32_t kTerminateEvent = kMaxEvents - 1;
constexpr uint32_t kNoWait = 0xFFFFFFFFu;  // static list: every producer ran earlier on this worker
// NVSHMEM (cross-GPU) events. A trigger id with this tag bit names a signal
// word in another PE's copy of the program's symmetric signal buffer: the
// worker adds 1 to it (system scope, after the task's stores) instead of
// counting a local event. Bits 24..30 hold the PE, bits 0..23 the word.
constexpr uint32_t kNvshmemEventTag = 0x80000000u;
constexpr uint32_t kMaxPes = 8;  // PEs a program may address: one node's GPUs
// Idle waits (a worker for a task, a scheduler for an event) get this many
// times the watchdog budget, so the wait that caused a hang reports it first.
constexpr uint64_t kIdleBudgetFactor = 2;

enum TaskKind : uint16_t {
  kTaskNoop = 0,
  kTaskCopy = 1,         // dims[0..1]: byte count (lo, hi); operands: dst, src
  kTaskCombineU32 = 2,   // dims: n, mul, add; operands: dst, src...; dst = (sum src) * mul + add
  kTaskWaitValue = 3,    // dims: value (lo, hi); operands: flag (u64); spins until flag >= value
  // NVSHMEM kinds (kernels/tasks/nvshmem_*.cuh).
  kTaskPut = 8,          // dims: bytes (lo, hi), pe; operands: dst (symmetric), src; dst on `pe` = src
  kTaskSignalWait = 9,   // dims: tagged event id, threshold per iteration, lag; waits on the own PE's signal word
  // The LLM kinds; dims and operands are documented in jax_mpk/task_kinds.py.
  kTaskElementwise = 16,
  kTaskReduce = 17,
  kTaskMatmul = 18,
  kTaskGatherRows = 19,
  kTaskDynamicSlice = 20,
  kTaskDynamicUpdateSlice = 21,
  kTaskSequence = 22,
  kTaskDecodeAttention = 23,
  kNumTaskKinds  // one past the largest kind
};

enum EventKind : uint16_t {
  kEventLaunch = 0,        // its owning scheduler dispatches its tasks
  kEventLaunchMassive = 1, // every scheduler dispatches a share of its tasks
  kEventEndOfGraph = 2,    // next iteration, or terminate
};

enum Schedule : uint32_t {
  kScheduleDynamic = 0,  // schedulers dispatch tasks as their events fire
  kScheduleStatic = 1,   // each worker walks a compiled list, waiting on counters
};

enum SlotSource : uint32_t {
  kSlotArg = 0,        // FFI operand `index`
  kSlotRet = 1,        // FFI result `index` (the workspace is the last result)
  kSlotWorkspace = 2,  // workspace + offset
  kSlotConstant = 3,   // program constants + offset, uploaded once per call site
  kSlotSymmetric = 4,  // symmetric (NVSHMEM) buffer `index` + offset, allocated beside the JAX arrays
  kSlotTaskCounters = 5,  // the control region's task counters + offset (zero at each launch)
};

struct ProgramHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t num_tasks;
  uint32_t num_events;
  uint32_t num_triggers;
  uint32_t num_operands;
  uint32_t num_slots;
  uint32_t num_args;               // FFI operands the call passes
  uint32_t num_rets;               // FFI results, the workspace excluded
  uint32_t num_workers;
  uint32_t num_schedulers;
  uint32_t worker_queue_capacity;
  uint32_t sched_queue_capacity;
  uint32_t num_iterations;
  uint32_t start_event;            // launched by scheduler 0 at each iteration start
  uint32_t end_event;              // kEventEndOfGraph, triggered by every sink task
  uint64_t watchdog_ns;            // budget of every spin-wait
  uint64_t control_bytes;          // ControlLayout(header).total, rounded to 256
  uint64_t workspace_bytes;        // control + intermediates
  uint64_t constant_bytes;
  uint32_t schedule;               // Schedule
  uint32_t num_worker_tasks;       // static: num_tasks; dynamic: 0
  uint32_t profile_capacity;       // ProfileEntry slots per worker; 0: no timeline
  uint16_t num_pes;                // PEs of the NVSHMEM job the program was compiled for; 0: none
  uint16_t pe;                     // the PE that runs this program
  uint32_t signal_slot;            // symmetric slot of the uint64 signal words (num_signals > 0)
  uint32_t num_signals;            // signal words NVSHMEM events name
  uint32_t flags;                  // kProgram* bits
  uint32_t num_task_counters;      // uint64 words tasks count arrivals in (kSlotTaskCounters)
};
static_assert(sizeof(ProgramHeader) == 128, "ProgramHeader is 128 bytes");

// ProgramHeader.flags
// Tests: before each launch every result the program writes (not the donated ones) and the
// workspace's intermediates are filled with 0xFF bytes (NaN for floats), so an element no
// task writes, or an intermediate read before it is written, shows in the results.
constexpr uint32_t kProgramPoisonResults = 1;
// A launch returns once it is queued; its outcome is read at a later launch (Megakernel::run).
constexpr uint32_t kProgramDeferErrors = 2;

// TaskDesc.flags
constexpr uint16_t kTaskRelaxedTriggers = 1;  // static: every consumer runs later on this worker
constexpr uint16_t kTaskPrefetch = 2;  // static: start loading its read-only operands before its wait

struct TaskDesc {
  uint16_t kind;
  uint16_t num_operands;
  uint32_t first_operand;
  uint32_t first_trigger;
  uint16_t num_triggers;
  uint16_t flags;
  int32_t dims[kMaxTaskDims];
};
static_assert(sizeof(TaskDesc) == 64, "TaskDesc is 64 bytes");

struct EventDesc {
  uint32_t threshold;   // triggers per iteration; counters grow monotonically
  uint32_t first_task;  // the tasks it launches: [first_task, last_task)
  uint32_t last_task;
  uint16_t kind;
  uint16_t scheduler;   // owner of a kEventLaunch
};
static_assert(sizeof(EventDesc) == 16, "EventDesc is 16 bytes");

struct Operand {
  uint32_t slot;
  uint32_t flags;
  uint64_t offset;            // bytes from the slot base
  uint64_t iteration_stride;  // bytes added per iteration
  uint64_t bytes;             // extent touched in one iteration
};
static_assert(sizeof(Operand) == 32, "Operand is 32 bytes");

struct SlotDesc {
  uint32_t source;  // SlotSource
  uint32_t index;   // FFI operand/result index
  uint64_t offset;  // into the workspace or the constants
  uint64_t bytes;
};
static_assert(sizeof(SlotDesc) == 24, "SlotDesc is 24 bytes");

// One entry of a worker's static list: run `task` once `wait_event` fired.
struct WorkerTask {
  uint32_t task;
  uint32_t wait_event;
};
static_assert(sizeof(WorkerTask) == 8, "WorkerTask is 8 bytes");

// One task's run on one worker, for the timeline (globaltimer nanoseconds).
// Phases a task may mark inside its run (TaskContext::mark): where its time goes.
constexpr int kProfileMarks = 4;

struct ProfileEntry {
  uint64_t start_ns;
  uint64_t end_ns;
  uint32_t task;
  uint32_t iteration;
  uint32_t marks[kProfileMarks];  // ns from start_ns to the task's first mark i; 0: unmarked
};
static_assert(sizeof(ProfileEntry) == 40, "ProfileEntry is 40 bytes");

// Written by the first block that fails; read by the host after the launch.
struct ErrorRecord {
  uint32_t abort;      // set by any failing block; every spin-wait polls it
  uint32_t code;       // ErrorCode
  uint32_t block;
  uint32_t task;
  uint32_t event;
  uint32_t iteration;
  uint64_t observed;   // what the wait saw (counter, queue position)
  uint64_t expected;
  uint64_t reserved[3];
};
static_assert(sizeof(ErrorRecord) == 64, "ErrorRecord is 64 bytes");

enum ErrorCode : uint32_t {
  kOk = 0,
  kWatchdogWorkerIdle = 1,      // a worker waited too long for a task
  kWatchdogSchedulerIdle = 2,   // a scheduler waited too long for an event
  kWatchdogWorkerQueueFull = 3, // a scheduler waited too long for queue room
  kWatchdogTaskWait = 4,        // a task waited too long on a value
  kSchedQueueOverflow = 5,
  kBadTaskKind = 6,
  kWatchdogTaskInputs = 7,      // a statically scheduled task waited too long for its event
  kWatchdogSignalWait = 8,      // a task waited too long for an NVSHMEM signal from a peer
};

inline MPK_HOST_DEVICE uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Byte offsets of the control region, from the workspace start.
struct ControlLayout {
  uint64_t error;            // ErrorRecord
  uint64_t task_counters;    // uint64[num_task_counters]: arrivals tasks count themselves
  uint64_t event_counters;   // uint64[num_events]
  uint64_t sched_tail;       // uint64[num_schedulers]: next free position (producers)
  uint64_t sched_head;       // uint64[num_schedulers]: consumed position (the scheduler)
  uint64_t sched_queues;     // uint64[num_schedulers][sched_queue_capacity]
  uint64_t worker_consumed;  // uint64[num_workers]: entries taken (the worker)
  uint64_t worker_queues;    // uint64[num_workers][worker_queue_capacity]
  uint64_t profile_counts;   // uint64[num_workers]: entries recorded (may exceed capacity)
  uint64_t profile;          // ProfileEntry[num_workers][profile_capacity]
  uint64_t total;            // rounded up to 256

  ControlLayout() = default;
  MPK_HOST_DEVICE explicit ControlLayout(const ProgramHeader& h) {
    uint64_t at = 0;
    error = at;           at += sizeof(ErrorRecord);
    task_counters = at;   at += 8ull * h.num_task_counters;
    event_counters = at;  at += 8ull * h.num_events;
    sched_tail = at;      at += 8ull * h.num_schedulers;
    sched_head = at;      at += 8ull * h.num_schedulers;
    sched_queues = at;    at += 8ull * h.num_schedulers * h.sched_queue_capacity;
    worker_consumed = at; at += 8ull * h.num_workers;
    worker_queues = at;   at += 8ull * h.num_workers * h.worker_queue_capacity;
    profile_counts = at;  at += 8ull * h.num_workers;
    profile = at;         at += sizeof(ProfileEntry) * uint64_t(h.num_workers) * h.profile_capacity;
    total = align_up(at, 256);
  }
};

// Section offsets within a program blob.
struct BlobLayout {
  uint64_t tasks, events, triggers, operands, slots, worker_task_begin, worker_tasks, constants, total;

  MPK_HOST_DEVICE explicit BlobLayout(const ProgramHeader& h) {
    uint64_t at = sizeof(ProgramHeader);
    tasks = at;     at += sizeof(TaskDesc) * uint64_t(h.num_tasks);
    events = at;    at += sizeof(EventDesc) * uint64_t(h.num_events);
    triggers = at;  at = align_up(at + 4ull * h.num_triggers, 8);
    operands = at;  at += sizeof(Operand) * uint64_t(h.num_operands);
    slots = at;     at += sizeof(SlotDesc) * uint64_t(h.num_slots);
    worker_task_begin = at;
    at = align_up(at + 4ull * (h.num_workers + 1ull), 8);
    worker_tasks = at; at += sizeof(WorkerTask) * uint64_t(h.num_worker_tasks);
    constants = at; at += h.constant_bytes;
    total = at;
  }
};

inline MPK_HOST_DEVICE bool is_nvshmem_event(uint32_t id) { return (id & kNvshmemEventTag) != 0; }
inline MPK_HOST_DEVICE uint32_t nvshmem_event(uint32_t pe, uint32_t word) {
  return kNvshmemEventTag | ((pe & 0x7Fu) << 24) | (word & 0xFFFFFFu);
}
inline MPK_HOST_DEVICE uint32_t nvshmem_event_pe(uint32_t id) { return (id >> 24) & 0x7Fu; }
inline MPK_HOST_DEVICE uint32_t nvshmem_event_word(uint32_t id) { return id & 0xFFFFFFu; }

// Scheduler-queue entry: lap tag (24) | iteration (16) | event (24).
inline MPK_HOST_DEVICE uint64_t pack_sched_entry(uint64_t lap, uint32_t iteration, uint32_t event) {
  return ((lap & 0xFFFFFFull) << 40) | (uint64_t(iteration & 0xFFFFu) << 24) | (event & 0xFFFFFFu);
}
// Worker-queue entry: lap tag (16) | iteration (16) | task (32). The tag is
// what the worker polls for, so an entry needs no separate ready counter.
inline MPK_HOST_DEVICE uint64_t pack_worker_entry(uint64_t lap, uint32_t iteration, uint32_t task) {
  return ((lap & 0xFFFFull) << 48) | (uint64_t(iteration & 0xFFFFu) << 32) | task;
}

}  // namespace mpk
