#pragma once
// Everything public in camex.

#include "camex/core/error.hpp"
#include "camex/core/random.hpp"
#include "camex/core/top_k.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/merge/soft_merge.hpp"
#include "camex/merge/ties_mask.hpp"
#include "camex/perf/stream.hpp"
