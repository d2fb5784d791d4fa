// Everything the runtime relies on, checked on the host before any launch.
#include <vector>

#include "../tasks/all_tasks.cuh"
#include "megakernel.h"
#include "message.h"
#include "scheduler.cuh"

namespace mpk {
namespace {

template <typename... Tasks>
const char* check_task(TaskList<Tasks...>, const TaskDesc& d, const Operand* ops, bool* known) {
  const char* why = nullptr;
  *known = false;
  ((d.kind == Tasks::kKind ? (why = Tasks::check(d, ops), *known = true) : false), ...);
  return why;
}

template <typename... Tasks>
const char* task_name(TaskList<Tasks...>, uint16_t kind) {
  const char* name = "unknown";
  ((kind == Tasks::kKind ? (name = Tasks::kName, true) : false), ...);
  return name;
}

class Checker {
 public:
  Checker(const uint8_t* blob, size_t size) : blob_(blob), size_(size) {}

  std::string run() {
    if (size_ < sizeof(ProgramHeader)) return fail() << "the blob of " << size_ << " bytes is shorter than a header", out();
    h_ = *reinterpret_cast<const ProgramHeader*>(blob_);
    if (h_.magic != kProgramMagic) return fail() << "bad magic: not a jax_mpk program", out();
    if (h_.version != kProgramVersion)
      return fail() << "program format version " << h_.version << ", the runtime reads " << kProgramVersion, out();
    const BlobLayout layout(h_);
    if (layout.total > size_) return fail() << "the blob is truncated: " << size_ << " bytes of " << layout.total, out();
    tasks_ = reinterpret_cast<const TaskDesc*>(blob_ + layout.tasks);
    events_ = reinterpret_cast<const EventDesc*>(blob_ + layout.events);
    triggers_ = reinterpret_cast<const uint32_t*>(blob_ + layout.triggers);
    operands_ = reinterpret_cast<const Operand*>(blob_ + layout.operands);
    slots_ = reinterpret_cast<const SlotDesc*>(blob_ + layout.slots);
    worker_task_begin_ = reinterpret_cast<const uint32_t*>(blob_ + layout.worker_task_begin);
    worker_tasks_ = reinterpret_cast<const WorkerTask*>(blob_ + layout.worker_tasks);
    if (!config() || !slots() || !nvshmem() || !tasks() || !events() || !thresholds() || !acyclic()) return out();
    if (h_.schedule == kScheduleStatic ? !static_lists() : !queues()) return out();
    return "";
  }

 private:
  Message& fail() { failed_ = true; return msg_; }
  std::string out() const { return msg_.str(); }

  bool config() {
    if (h_.num_tasks == 0) return fail() << "the program has no tasks", false;
    if (h_.num_events < 2 || h_.num_events >= kTerminateEvent)
      return fail() << "the program has " << h_.num_events << " events; it needs 2 to " << kTerminateEvent - 1, false;
    if (h_.num_slots > kMaxSlots) return fail() << h_.num_slots << " buffer slots; at most " << kMaxSlots, false;
    if (h_.num_workers == 0 || h_.num_schedulers == 0 || h_.num_schedulers > h_.num_workers)
      return fail() << "needs 1 <= schedulers (" << h_.num_schedulers << ") <= workers (" << h_.num_workers << ")", false;
    if ((h_.num_workers + h_.num_schedulers - 1) / h_.num_schedulers > kMaxWorkersPerScheduler)
      return fail() << "a scheduler may own at most " << kMaxWorkersPerScheduler << " workers", false;
    if (h_.num_iterations == 0 || h_.num_iterations > kMaxIterations)
      return fail() << "num_iterations " << h_.num_iterations << " is outside [1, " << kMaxIterations << "]", false;
    if (h_.worker_queue_capacity == 0 || h_.sched_queue_capacity == 0) return fail() << "a queue capacity is zero", false;
    if (h_.watchdog_ns == 0) return fail() << "the watchdog budget is zero", false;
    if (h_.schedule > kScheduleStatic) return fail() << "unknown schedule " << h_.schedule, false;
    if (h_.flags & ~(kProgramPoisonResults | kProgramDeferErrors)) return fail() << "unknown program flags " << h_.flags, false;
    if (h_.profile_capacity > (1u << 20))
      return fail() << "profile capacity " << h_.profile_capacity << " exceeds 2^20 entries per worker", false;
    if (h_.schedule == kScheduleDynamic)
      for (uint32_t t = 0; t < h_.num_tasks; ++t)
        if (tasks_[t].flags & kTaskRelaxedTriggers)
          return fail() << "task " << t << " has relaxed triggers, which only a static schedule allows", false;
    if (h_.num_worker_tasks != (h_.schedule == kScheduleStatic ? h_.num_tasks : 0))
      return fail() << "a static schedule lists every task once; a dynamic one lists none", false;
    if (h_.start_event >= h_.num_events || h_.end_event >= h_.num_events || h_.start_event == h_.end_event)
      return fail() << "start event " << h_.start_event << " / end event " << h_.end_event << " out of range", false;
    const ControlLayout control(h_);
    if (h_.control_bytes != control.total)
      return fail() << "control region of " << h_.control_bytes << " bytes; this configuration needs "
                    << control.total, false;
    if (h_.workspace_bytes < h_.control_bytes)
      return fail() << "workspace too small: " << h_.workspace_bytes << " bytes, the control region alone needs "
                    << h_.control_bytes, false;
    return true;
  }

  bool slots() {
    for (uint32_t i = 0; i < h_.num_slots; ++i) {
      const SlotDesc& s = slots_[i];
      switch (s.source) {
        case kSlotArg:
          if (s.index >= h_.num_args) return fail() << "slot " << i << " names operand " << s.index << " of " << h_.num_args, false;
          break;
        case kSlotRet:
          if (s.index >= h_.num_rets) return fail() << "slot " << i << " names result " << s.index << " of " << h_.num_rets, false;
          break;
        case kSlotWorkspace:
          if (s.offset < h_.control_bytes || s.offset + s.bytes > h_.workspace_bytes)
            return fail() << "workspace too small: slot " << i << " spans [" << s.offset << ", " << s.offset + s.bytes
                          << ") outside the intermediates [" << h_.control_bytes << ", " << h_.workspace_bytes << ")", false;
          break;
        case kSlotConstant:
          if (s.offset + s.bytes > h_.constant_bytes)
            return fail() << "slot " << i << " reads past the " << h_.constant_bytes << " bytes of constants", false;
          break;
        case kSlotTaskCounters:
          if (s.offset % 8 || s.offset + s.bytes > 8ull * h_.num_task_counters)
            return fail() << "slot " << i << " spans bytes [" << s.offset << ", " << s.offset + s.bytes
                          << ") of the " << h_.num_task_counters << " task counters", false;
          break;
        case kSlotSymmetric:  // the buffer's size is checked when a launch binds it
          if (h_.num_pes == 0)
            return fail() << "slot " << i << " names symmetric buffer " << s.index
                          << ", but the program declares no NVSHMEM PEs (num_pes 0)", false;
          break;
        default:
          return fail() << "slot " << i << " has unknown source " << s.source, false;
      }
    }
    for (uint32_t i = 0; i < h_.num_operands; ++i) {
      const Operand& o = operands_[i];
      if (o.slot >= h_.num_slots) return fail() << "operand " << i << " names dangling slot " << o.slot, false;
      const uint64_t end = o.offset + o.bytes + uint64_t(h_.num_iterations - 1) * o.iteration_stride;
      if (end > slots_[o.slot].bytes)
        return fail() << "operand " << i << " reaches byte " << end << " of slot " << o.slot << ", which holds "
                      << slots_[o.slot].bytes, false;
    }
    return true;
  }

  // The NVSHMEM header fields and the signal buffer, before any task names them.
  bool nvshmem() {
    if (h_.num_pes > kMaxPes)
      return fail() << "the program addresses " << h_.num_pes << " PEs; at most " << kMaxPes << " (one node)", false;
    if (h_.num_pes != 0 && h_.pe >= h_.num_pes)
      return fail() << "the program runs on PE " << h_.pe << " of " << h_.num_pes, false;
    if (h_.num_signals == 0) return true;
    if (h_.num_pes == 0) return fail() << "the program has " << h_.num_signals << " signal words but no NVSHMEM PEs", false;
    if (h_.num_signals > (1u << 24)) return fail() << "at most 2^24 signal words; the program has " << h_.num_signals, false;
    if (h_.signal_slot >= h_.num_slots || slots_[h_.signal_slot].source != kSlotSymmetric)
      return fail() << "the signal slot " << h_.signal_slot << " is not a symmetric buffer slot", false;
    if (slots_[h_.signal_slot].bytes < 8ull * h_.num_signals || slots_[h_.signal_slot].offset % 8 != 0)
      return fail() << "the signal slot holds " << slots_[h_.signal_slot].bytes << " bytes; "
                    << h_.num_signals << " signal words need " << 8ull * h_.num_signals << ", 8-byte aligned", false;
    return true;
  }

  // Why an NVSHMEM event id cannot be signalled (own: waited on by this PE), or null.
  const char* nvshmem_event_error(uint32_t id, bool own) const {
    if (h_.num_signals == 0) return "the program declares no signal words";
    if (nvshmem_event_word(id) >= h_.num_signals) return "its signal word is past the program's signal words";
    if (nvshmem_event_pe(id) >= h_.num_pes) return "its PE is past the program's PEs";
    if (own && nvshmem_event_pe(id) != h_.pe) return "a PE waits only on its own signal words";
    return nullptr;
  }

  // What the NVSHMEM kinds need beyond their own check: the slot table and header.
  const char* nvshmem_task_error(const TaskDesc& d) const {
    if (d.kind == kTaskPut) {
      if (h_.num_pes == 0) return "put needs a program with NVSHMEM PEs";
      if (uint32_t(d.dims[2]) >= h_.num_pes) return "put names a PE past the program's PEs";
      if (slots_[operands_[d.first_operand].slot].source != kSlotSymmetric)
        return "put's destination is not a symmetric buffer: peers cannot address it";
    }
    if (d.kind == kTaskSignalWait) return nvshmem_event_error(uint32_t(d.dims[0]), true);
    return nullptr;
  }

  // Each step of a sequence task passes its own kind's check, on the rows of the task.
  bool sequence_steps(uint32_t t, const TaskDesc& d) {
    const Operand& desc = operands_[d.first_operand];
    const SlotDesc& slot = slots_[desc.slot];
    if (slot.source != kSlotConstant)
      return fail() << "task " << t << " (sequence): its descriptor is not in the program's constants", false;
    const uint64_t words_at = BlobLayout(h_).constants + slot.offset + desc.offset;
    const auto* words = reinterpret_cast<const int32_t*>(blob_ + words_at);
    const uint64_t num_words = desc.bytes / 4;
    const int64_t steps = words[0];
    if (steps < 1 || 1 + uint64_t(steps) * SequenceTask::kStepWords > num_words)
      return fail() << "task " << t << " (sequence): its descriptor of " << num_words << " words does not hold "
                    << steps << " steps", false;
    uint32_t operand = d.first_operand + 1;
    for (int64_t s = 0; s < steps; ++s) {
      const int32_t* step_words = words + 1 + s * SequenceTask::kStepWords;
      const TaskDesc step = SequenceTask::step_desc(step_words, d, operand);
      if (!SequenceTask::is_step_kind(step.kind) || step_words[2] + 1 >= int32_t(kMaxTaskDims))
        return fail() << "task " << t << " (sequence): step " << s << " has kind " << step_words[0]
                      << " or range dim " << step_words[2] << ", which a sequence cannot run", false;
      if (uint64_t(operand) + step.num_operands > uint64_t(d.first_operand) + d.num_operands)
        return fail() << "task " << t << " (sequence): step " << s << " names operands past the task's "
                      << d.num_operands, false;
      bool known;
      if (const char* why = check_task(AllTasks{}, step, operands_ + operand, &known))
        return fail() << "task " << t << " (sequence) step " << s << " (" << task_name(AllTasks{}, step.kind)
                      << "): " << why, false;
      operand += step.num_operands;
    }
    return true;
  }

  bool tasks() {
    launched_.assign(h_.num_tasks, 0);
    for (uint32_t t = 0; t < h_.num_tasks; ++t) {
      const TaskDesc& d = tasks_[t];
      if (uint64_t(d.first_operand) + d.num_operands > h_.num_operands)
        return fail() << "task " << t << " names dangling operands", false;
      if (uint64_t(d.first_trigger) + d.num_triggers > h_.num_triggers)
        return fail() << "task " << t << " names dangling triggers", false;
      if (d.num_triggers == 0)
        return fail() << "task " << t << " triggers no event; every task must lead to the end-of-graph event", false;
      for (uint32_t k = 0; k < d.num_triggers; ++k) {
        const uint32_t e = triggers_[d.first_trigger + k];
        if (is_nvshmem_event(e)) {
          if (const char* why = nvshmem_event_error(e, false))
            return fail() << "task " << t << " signals NVSHMEM event (PE " << nvshmem_event_pe(e) << ", word "
                          << nvshmem_event_word(e) << "): " << why, false;
          if (d.flags & kTaskRelaxedTriggers)
            return fail() << "task " << t << " signals a peer, so its triggers cannot be relaxed", false;
        } else if (e >= h_.num_events) {
          return fail() << "task " << t << " triggers dangling event " << e, false;
        }
      }
      bool known;
      const char* why = check_task(AllTasks{}, d, operands_ + d.first_operand, &known);
      if (!known) return fail() << "task " << t << " has kind " << d.kind << ", which the CUDA task library lacks", false;
      if (why) return fail() << "task " << t << " (" << task_name(AllTasks{}, d.kind) << "): " << why, false;
      if (const char* nv = nvshmem_task_error(d))
        return fail() << "task " << t << " (" << task_name(AllTasks{}, d.kind) << "): " << nv, false;
      if (d.kind == kTaskSequence && !sequence_steps(t, d)) return false;
    }
    return true;
  }

  bool events() {
    for (uint32_t e = 0; e < h_.num_events; ++e) {
      const EventDesc& ev = events_[e];
      const bool end = e == h_.end_event;
      if ((ev.kind == kEventEndOfGraph) != end)
        return fail() << "event " << e << (end ? " is the end event but not of kind end-of-graph" : " is a second end-of-graph event"), false;
      if (ev.kind > kEventEndOfGraph) return fail() << "event " << e << " has unknown kind " << ev.kind, false;
      if (ev.first_task > ev.last_task || ev.last_task > h_.num_tasks)
        return fail() << "event " << e << " launches dangling tasks [" << ev.first_task << ", " << ev.last_task << ")", false;
      if (end != (ev.first_task == ev.last_task))
        return fail() << "event " << e << (end ? ": the end event launches tasks" : " launches no tasks"), false;
      if (ev.kind == kEventLaunch && ev.scheduler >= h_.num_schedulers)
        return fail() << "event " << e << " belongs to scheduler " << ev.scheduler << " of " << h_.num_schedulers, false;
      for (uint32_t t = ev.first_task; t < ev.last_task; ++t) ++launched_[t];
    }
    for (uint32_t t = 0; t < h_.num_tasks; ++t)
      if (launched_[t] != 1) return fail() << "task " << t << " is launched by " << launched_[t] << " events, not one", false;
    return true;
  }

  bool thresholds() {
    triggered_.assign(h_.num_events, 0);
    for (uint32_t k = 0; k < h_.num_triggers; ++k)
      if (!is_nvshmem_event(triggers_[k])) ++triggered_[triggers_[k]];  // NVSHMEM events count on the peer
    for (uint32_t e = 0; e < h_.num_events; ++e) {
      if (e == h_.start_event) {
        if (events_[e].threshold != 0 || triggered_[e] != 0)
          return fail() << "the start event " << e << " must have threshold 0 and no triggers", false;
        continue;
      }
      if (events_[e].threshold == 0) return fail() << "event " << e << " has threshold 0 but is not the start event", false;
      if (triggered_[e] < events_[e].threshold)
        return fail() << "event " << e << " needs " << events_[e].threshold << " triggers per iteration but only "
                      << triggered_[e] << " tasks trigger it: it can never fire", false;
      if (triggered_[e] > events_[e].threshold)
        return fail() << "event " << e << " is triggered by " << triggered_[e] << " tasks but its threshold is "
                      << events_[e].threshold, false;
    }
    return true;
  }

  // Kahn's algorithm over events: an event is done once every task that
  // triggers it was launched by a done event.
  bool acyclic() {
    std::vector<uint32_t> remaining(triggered_), ready{h_.start_event};
    uint32_t done = 0;
    while (!ready.empty()) {
      const uint32_t e = ready.back();
      ready.pop_back();
      ++done;
      for (uint32_t t = events_[e].first_task; t < events_[e].last_task; ++t)
        for (uint32_t k = 0; k < tasks_[t].num_triggers; ++k) {
          const uint32_t next = triggers_[tasks_[t].first_trigger + k];
          if (!is_nvshmem_event(next) && --remaining[next] == 0) ready.push_back(next);
        }
    }
    if (done == h_.num_events) return true;
    for (uint32_t e = 0; e < h_.num_events; ++e)
      if (remaining[e] != 0)
        return fail() << "cycle: event " << e << " (launching tasks [" << events_[e].first_task << ", "
                      << events_[e].last_task << ")) waits on tasks that depend on it", false;
    return true;
  }

  // Each worker's list must be increasing in program order, and program order
  // topological: then the lowest unfinished task can always run, so the lists
  // cannot deadlock.
  bool static_lists() {
    std::vector<uint32_t> launcher(h_.num_tasks), seen(h_.num_tasks, 0);
    for (uint32_t e = 0; e < h_.num_events; ++e)
      for (uint32_t t = events_[e].first_task; t < events_[e].last_task; ++t) launcher[t] = e;
    for (uint32_t t = 0; t < h_.num_tasks; ++t)
      for (uint32_t k = 0; k < tasks_[t].num_triggers; ++k) {
        const uint32_t e = triggers_[tasks_[t].first_trigger + k];
        if (is_nvshmem_event(e)) continue;
        if (e != h_.end_event && events_[e].first_task <= t)
          return fail() << "static schedule: task " << t << " feeds event " << e << ", which launches task "
                        << events_[e].first_task << " at or before it; program order must be topological", false;
      }
    if (worker_task_begin_[0] != 0 || worker_task_begin_[h_.num_workers] != h_.num_worker_tasks)
      return fail() << "static schedule: the worker lists do not cover the task list", false;
    worker_of_.assign(h_.num_tasks, 0);
    for (uint32_t w = 0; w < h_.num_workers; ++w)
      for (uint32_t i = worker_task_begin_[w]; i < worker_task_begin_[w + 1] && i < h_.num_worker_tasks; ++i)
        if (worker_tasks_[i].task < h_.num_tasks) worker_of_[worker_tasks_[i].task] = w;
    wait_of_.assign(h_.num_tasks, 0);
    producers_.assign(h_.num_events, {});
    for (uint32_t t = 0; t < h_.num_tasks; ++t)
      for (uint32_t k = 0; k < tasks_[t].num_triggers; ++k) {
        const uint32_t e = triggers_[tasks_[t].first_trigger + k];
        if (!is_nvshmem_event(e)) producers_[e].push_back(t);
      }
    for (uint32_t w = 0; w < h_.num_workers; ++w) {
      const uint32_t b = worker_task_begin_[w], e = worker_task_begin_[w + 1];
      if (b > e) return fail() << "static schedule: worker " << w << " has a negative list", false;
      for (uint32_t i = b; i < e; ++i) {
        const WorkerTask& item = worker_tasks_[i];
        if (item.task >= h_.num_tasks) return fail() << "static schedule: dangling task " << item.task, false;
        if (i > b && item.task <= worker_tasks_[i - 1].task)
          return fail() << "static schedule: worker " << w << "'s list is not increasing at task " << item.task, false;
        if (item.wait_event == kNoWait) {
          if (!producers_precede(launcher[item.task], w))
            return fail() << "static schedule: task " << item.task << " skips its wait, but not all its producers "
                          << "run on worker " << w, false;
        } else if (item.wait_event != launcher[item.task]) {
          return fail() << "static schedule: task " << item.task << " waits on event " << item.wait_event
                        << " but is launched by event " << launcher[item.task], false;
        }
        if (seen[item.task]++)
          return fail() << "static schedule: task " << item.task << " is listed twice", false;
        wait_of_[item.task] = item.wait_event;
      }
    }
    for (uint32_t t = 0; t < h_.num_tasks; ++t) {
      if (!(tasks_[t].flags & kTaskRelaxedTriggers)) continue;
      for (uint32_t k = 0; k < tasks_[t].num_triggers; ++k) {
        const uint32_t e = triggers_[tasks_[t].first_trigger + k];
        bool local = e != h_.end_event;
        for (uint32_t u = events_[e].first_task; local && u < events_[e].last_task; ++u) local = wait_of_[u] == kNoWait;
        if (!local)
          return fail() << "static schedule: task " << t << " triggers event " << e << " without release, but a "
                        << "consumer on another worker polls it", false;
      }
    }
    return true;
  }

  // A wait may be skipped when every producer of the launch event runs earlier
  // on the same worker: the list order and the block barrier then suffice.
  bool producers_precede(uint32_t event, uint32_t worker) const {
    if (event == h_.start_event) return false;
    for (uint32_t t : producers_[event])
      if (worker_of_[t] != worker) return false;
    return true;
  }

  bool queues() {
    std::vector<uint64_t> routed(h_.num_schedulers, 0);
    for (uint32_t e = 0; e < h_.num_events; ++e) {
      if (events_[e].kind == kEventLaunchMassive)
        for (auto& r : routed) ++r;
      else
        ++routed[events_[e].kind == kEventEndOfGraph ? 0 : events_[e].scheduler];
    }
    for (uint32_t s = 0; s < h_.num_schedulers; ++s)
      if (routed[s] + 3 > h_.sched_queue_capacity)
        return fail() << "queue capacity exceeded: scheduler " << s << " receives " << routed[s]
                      << " events per iteration (+3 for iteration control) but its queue holds "
                      << h_.sched_queue_capacity, false;
    return true;
  }

  const uint8_t* blob_;
  size_t size_;
  ProgramHeader h_;
  const TaskDesc* tasks_;
  const EventDesc* events_;
  const uint32_t* triggers_;
  const Operand* operands_;
  const SlotDesc* slots_;
  const uint32_t* worker_task_begin_;
  const WorkerTask* worker_tasks_;
  std::vector<uint32_t> launched_, triggered_, worker_of_, wait_of_;
  std::vector<std::vector<uint32_t>> producers_;
  Message msg_;
  bool failed_ = false;
};

}  // namespace

std::string validate_program(const uint8_t* blob, size_t size) { return Checker(blob, size).run(); }

namespace {
template <typename... Tasks>
std::vector<std::pair<int, std::string>> list_kinds(TaskList<Tasks...>) {
  return {{int(Tasks::kKind), Tasks::kName}...};
}
}  // namespace

std::vector<std::pair<int, std::string>> task_kinds() { return list_kinds(AllTasks{}); }

}  // namespace mpk
