// shoal.hpp — umbrella header: everything a C++ user of libshoal needs.
#pragma once
#include "shoal/allocation.hpp"
#include "shoal/check.hpp"
#include "shoal/frame.hpp"
#include "shoal/loaded_libraries.hpp"
#include "shoal/parallel.hpp"
#include "shoal/pool_channel.hpp"
#include "shoal/shm_segment.hpp"
#include "shoal/task_ring.hpp"
#include "shoal/thread_pool.hpp"
#include "shoal/topology.hpp"
#include "shoal/version.hpp"
#include "shoal/worker_supervisor.hpp"
