"""Fixed feature maps a site trains and distils through: no trainable parameters, no statistics of any data.

`none` keeps pixels (the ConvNet gradient-matching engine); `scatter` is a ScatterNet (Tramèr & Boneh, 2021).
"""

from fedsynth.common.front_end.base import FRONT_ENDS, FrontEnd, build_front_end

__all__ = ["FRONT_ENDS", "FrontEnd", "build_front_end"]
