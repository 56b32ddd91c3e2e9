"""MoICE (Mixture of In-Context Experts, arXiv:2406.19598) as a drop-in attention for lmlab and Hugging Face models.

    from lmlab.models.moice import Config, apply_moice, save_routers, load_routers, search_bases

    model = apply_moice(model, Config(bases=[10000, 20000, 40000], top_k=2, identity_init=True))
    # only the routers are trainable now: train with the Trainer (the balance loss arrives via pop_aux)
    save_routers(model, "routers/")                      # moice.safetensors + moice_config.json
    model = load_routers(fresh_base_model, "routers/")   # applies the saved config, loads the routers

``attention`` holds the method (config, router, N-base attention, balance loss), ``apply`` the module
replacement and router I/O, ``search`` the base-set search.
"""

from .apply import MoICEAttention, MoICELlamaAttention, apply_moice, is_applied, load_routers, save_routers
from .attention import RELEASE_BASES, BaseTables, Config, Router, moice_attend, route
from .search import SearchResult, search_bases

__all__ = ["RELEASE_BASES", "BaseTables", "Config", "MoICEAttention", "MoICELlamaAttention",
           "Router", "SearchResult", "apply_moice", "is_applied", "load_routers", "moice_attend", "route",
           "save_routers", "search_bases"]
