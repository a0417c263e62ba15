"""Suite-wide test settings.

The tests run tiny models, for which torch's intra-op threads cost more than they save: on a
busy 2-core machine, training the [2,5,1,5,2] toy took 30 s with 2 threads and 0.6 s with 1.
One thread also keeps the budget tests' timings steady.
"""

import torch

torch.set_num_threads(1)
