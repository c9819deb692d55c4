#pragma once
#include "camex/merge/concepts.hpp"
