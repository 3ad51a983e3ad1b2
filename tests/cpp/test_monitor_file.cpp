#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "shoal/monitor_file.hpp"
#include "shoal/frame.hpp"
#include "shoal/pool_channel.hpp"
#include "shoal/sampler.hpp"

using namespace shoal;

namespace {
std::string temp_path(const char* name) {
  return std::string(::testing::TempDir()) + "/" + name + "." + std::to_string(::getpid());
}
std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TEST(MonitorFile, ShuffleRoundTrips) {
  std::string s;
  for (int i = 0; i < 48 * 7; ++i) s.push_back(static_cast<char>(i * 31));
  EXPECT_EQ(unshuffle_records(shuffle_records(s, 48), 48), s);
  EXPECT_EQ(shuffle_records(s, 0), s);
}

TEST(MonitorFile, ChunksRoundTrip) {
  const std::string path = temp_path("chunks");
  {
    MonitorWriter w(path);
    EXPECT_TRUE(w.append(ChunkType::meta, "{\"a\": 1}", 8));
    std::vector<TaskEvent> ev(1000);
    for (std::size_t i = 0; i < ev.size(); ++i) {
      ev[i].task = i;
      ev[i].start = static_cast<std::int64_t>(i * 1000);
    }
    EXPECT_TRUE(w.append(ChunkType::task_events, ev.data(), ev.size() * sizeof(TaskEvent),
                         sizeof(TaskEvent)));
    EXPECT_TRUE(w.append(ChunkType::end, "{}", 2));
  }
  const std::string bytes = slurp(path);
  ParsedMonitorFile f = parse_monitor_file(bytes);
  ASSERT_EQ(f.chunks.size(), 3u);
  EXPECT_EQ(f.truncated, "");
  EXPECT_EQ(f.chunks[0].data, "{\"a\": 1}");
  ASSERT_EQ(f.chunks[1].data.size(), 1000 * sizeof(TaskEvent));
  const auto* back = reinterpret_cast<const TaskEvent*>(f.chunks[1].data.data());
  EXPECT_EQ(back[999].task, 999u);
  EXPECT_EQ(back[999].start, 999000);
  // Compressed well below the 48 bytes of a record.
  EXPECT_LT(bytes.size(), 1000 * sizeof(TaskEvent) / 3);

  // Every cut inside the last chunk is a truncated tail, not an error.
  for (std::size_t cut = 1; cut < monitor_chunk_header_bytes + 2; ++cut) {  // the end chunk: 22 bytes
    ParsedMonitorFile t = parse_monitor_file(std::string_view(bytes).substr(0, bytes.size() - cut));
    EXPECT_EQ(t.chunks.size(), 2u);
    EXPECT_NE(t.truncated, "");
  }
  // A flipped byte in a middle chunk is damage.
  std::string bad = bytes;
  bad[monitor_header_bytes + monitor_chunk_header_bytes + 2] ^= 0x40;
  EXPECT_THROW(parse_monitor_file(bad), MonitorFileError);
  EXPECT_THROW(parse_monitor_file("GIF89a......................"), MonitorFileError);
  EXPECT_THROW(parse_monitor_file(""), MonitorFileError);
  std::remove(path.c_str());
}

TEST(MonitorFile, UnwritablePathThrowsSystemError) {
  EXPECT_THROW(MonitorWriter("/nonexistent-dir/x.shoal"), std::exception);
}

TEST(Sampler, DrainsRingsAndDriverEventsIntoTheFile) {
  const std::string path = temp_path("sampler");
  {
    Sampler s(Sampler::Options{path, 100.0, {0}, 64});
    s.add_rings(3, 2, false);
    RingWriter w = s.thread_writer(3, 1);
    s.start();
    for (int i = 1; i <= 100; ++i) {
      DriverEvent d;
      d.kind = driver_submit;
      d.task = static_cast<std::uint64_t>(i);
      s.driver_event(d);
      w.record(static_cast<std::uint64_t>(i), 5, 10, 0);
    }
    s.watch(3, 1, 0, ::gettid());
    s.remove_rings(3);
    s.stop("{\"end\": true}");
    EXPECT_EQ(s.dropped(), 100u - 64u);
  }
  ParsedMonitorFile f = parse_monitor_file(slurp(path));
  EXPECT_EQ(f.truncated, "");
  std::size_t tasks = 0, driver = 0, ends = 0;
  for (const auto& c : f.chunks) {
    if (c.type == static_cast<std::uint32_t>(ChunkType::task_events)) tasks += c.data.size() / sizeof(TaskEvent);
    if (c.type == static_cast<std::uint32_t>(ChunkType::driver_events)) driver += c.data.size() / sizeof(DriverEvent);
    if (c.type == static_cast<std::uint32_t>(ChunkType::end)) ++ends;
  }
  EXPECT_EQ(tasks, 64u);  // the rest did not fit the 64-record ring before the drain
  EXPECT_EQ(driver, 100u);
  EXPECT_EQ(ends, 1u);
  std::remove(path.c_str());
}

TEST(MonitorFile, DeltaVarintsRoundTripAndRejectDamage) {
  std::vector<std::uint64_t> words = {0, 1, ~0ull, 5, 1ull << 63, 3, 42, 41, 0, 7, 7, 7};
  std::string raw(reinterpret_cast<const char*>(words.data()), words.size() * 8);
  for (std::size_t rs : {8u, 16u, 24u, 48u}) {
    if (raw.size() % rs) continue;
    const std::string enc = delta_encode(raw, rs);
    std::string back;
    ASSERT_TRUE(delta_decode(enc, rs, raw.size(), back));
    EXPECT_EQ(back, raw);
    EXPECT_FALSE(delta_decode(enc.substr(0, enc.size() - 1), rs, raw.size(), back));
    EXPECT_FALSE(delta_decode(enc + "x", rs, raw.size(), back));
  }
  std::string overlong(11, '\xff');
  std::string back;
  EXPECT_FALSE(delta_decode(overlong, 8, 8, back));
}

// The worker's side through PoolChannel: a result pushed while its task is
// current is recorded when the task ends; a failure pushed after the task
// ended takes the times of that end; one never current takes no time.
TEST(Sampler, WorkerRecordsThroughThePoolChannel) {
  const std::string path = temp_path("channel");
  Sampler s(Sampler::Options{path, 10.0, {}, 64});
  const std::string seg = s.add_rings(2, 1, true);
  PoolChannel ch = PoolChannel::create(1, 1 << 16);
  ch.attach_monitor(seg, 2, 0);
  ch.set_current(0, 7);
  ch.note_result(0, 7, static_cast<std::uint32_t>(FrameKind::Result), 11);
  ch.set_current(0, 8);  // 7 ends here
  ch.set_current(0, 0);  // 8 ends before its failure is pushed
  ch.note_result(0, 8, static_cast<std::uint32_t>(FrameKind::Failure), 22);
  ch.note_result(0, 9, static_cast<std::uint32_t>(FrameKind::Failure), 33);  // never current
  ch.note_result(0, 9, static_cast<std::uint32_t>(FrameKind::Control), 1);   // not a task end
  s.remove_rings(2);
  s.stop("{}");
  ParsedMonitorFile f = parse_monitor_file(slurp(path));
  std::vector<TaskEvent> ev;
  for (const auto& c : f.chunks)
    if (c.type == static_cast<std::uint32_t>(ChunkType::task_events))
      for (std::size_t at = 0; at < c.data.size(); at += sizeof(TaskEvent)) {
        TaskEvent e;
        std::memcpy(&e, c.data.data() + at, sizeof e);
        ev.push_back(e);
      }
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].task, 7u);
  EXPECT_EQ(ev[0].outcome, 0);
  EXPECT_EQ(ev[0].bytes_out, 11u);
  EXPECT_EQ(ev[1].task, 8u);
  EXPECT_EQ(ev[1].outcome, 1);
  EXPECT_EQ(ev[1].start, ev[0].end);  // 8 began when 7 ended
  EXPECT_LE(ev[1].start, ev[1].end);
  EXPECT_EQ(ev[2].task, 9u);
  EXPECT_EQ(ev[2].start, ev[2].end);
  EXPECT_EQ(ev[0].pool, 2);
  EXPECT_EQ(ev[0].pid, static_cast<std::uint32_t>(::getpid()));
  std::remove(path.c_str());
}

// Where NVML is absent (CI, this machine) the probe says why and the
// sampler records no GPU samples; where it is present, every GPU is named.
TEST(Sampler, GpuProbeSaysWhyThereAreNoGpus) {
  std::string why;
  auto probe = NvmlProbe::open(why);
  if (probe) {
    EXPECT_FALSE(probe->names().empty());
    std::vector<GpuSampleRecord> g;
    probe->sample(1, g);
    EXPECT_LE(g.size(), probe->names().size());
  } else {
    EXPECT_NE(why, "");
  }
}
