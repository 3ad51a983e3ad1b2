// shoal.hpp — umbrella header: everything a C++ user of libshoal needs.
#pragma once
#include "shoal/allocation.hpp"
#include "shoal/check.hpp"
#include "shoal/shm_segment.hpp"
#include "shoal/topology.hpp"
#include "shoal/version.hpp"
