"""The planner's two solvers by name, behind one interface: ``solve(problem, relax) -> Solution``.

``exact`` (``solve_exact``): a mixed-integer linear program, optimal within HiGHS's gap and time limit.
``fast`` (``solve_fast``): greedy + repair + local search, for large graphs. Both honour the constraints
described in ``tessera.planner.solution``.
"""

from __future__ import annotations

from tessera.planner.solve_exact import solve_exact
from tessera.planner.solve_fast import solve_fast

SOLVERS = {"exact": solve_exact, "fast": solve_fast}
