// shoal.hpp — umbrella header: everything a C++ user of libshoal needs.
#pragma once
#include "shoal/check.hpp"
#include "shoal/shm_segment.hpp"
#include "shoal/version.hpp"
#include "shoal/frame.hpp"
#include "shoal/pool_channel.hpp"
#include "shoal/task_ring.hpp"
#include "shoal/worker_supervisor.hpp"
