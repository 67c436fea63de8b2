"""The risk decision core: plain Python, no Django. See ``docs/risk.md`` for the rules and formulas.

The shell (``risk/services.py``, models, admin) loads state, calls these functions, persists and audits.
"""

from risk.engine.checks import (
    BROKER_FOR_MODE,
    Decision,
    Mode,
    OrderIntent,
    PriceQuote,
    Snapshot,
    Verdict,
    check_order,
)
from risk.engine.correlation import (
    Correlations,
    correlated_groups,
    group_exposures,
    group_of,
    groups_from,
    rolling_correlations,
)
from risk.engine.exits import (
    ExitEvaluation,
    ExitPlan,
    ExitReason,
    ExitSignal,
    breakeven_price,
    evaluate_bar,
    plan_exits,
    ratchet,
)
from risk.engine.killswitch import (
    Action,
    KillSwitchRefused,
    Status,
    SwitchState,
    Transition,
    entries_allowed,
    halt,
    on_day_change,
    on_equity,
    rearm,
    resume,
)
from risk.engine.nav import DayEquity, Mark, external_flow, marked_equity, observe_equity, utc_day
from risk.engine.policy import Distance, ExitRule, RiskPolicy
from risk.engine.reasons import Code, Finding, RiskInputError
from risk.engine.sizing import Size, floor_to_lot, price_volatility, size_entry

__all__ = [
    "BROKER_FOR_MODE",
    "Action",
    "Code",
    "Correlations",
    "DayEquity",
    "Decision",
    "Distance",
    "ExitEvaluation",
    "ExitPlan",
    "ExitReason",
    "ExitRule",
    "ExitSignal",
    "Finding",
    "KillSwitchRefused",
    "Mark",
    "Mode",
    "OrderIntent",
    "PriceQuote",
    "RiskInputError",
    "RiskPolicy",
    "Size",
    "Snapshot",
    "Status",
    "SwitchState",
    "Transition",
    "Verdict",
    "breakeven_price",
    "check_order",
    "correlated_groups",
    "entries_allowed",
    "evaluate_bar",
    "external_flow",
    "floor_to_lot",
    "group_exposures",
    "group_of",
    "groups_from",
    "halt",
    "marked_equity",
    "observe_equity",
    "on_day_change",
    "on_equity",
    "plan_exits",
    "price_volatility",
    "ratchet",
    "rearm",
    "resume",
    "rolling_correlations",
    "size_entry",
    "utc_day",
]
