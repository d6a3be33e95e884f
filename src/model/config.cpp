// Placeholder so the skeleton links; ModelConfig's JSON mapping lives here.
#include "model/config.h"
