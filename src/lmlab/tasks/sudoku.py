"""Sudoku (4x4, 6x6, 9x9) with a guaranteed unique solution: MGDM's Sudoku task.

Paper: "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning", Ye et al., ICLR 2025,
arXiv:2410.14157 (9x9 Sudoku; the paper trains on a public 1M-puzzle set, scored by exact match).
Idea: fill the blanks so that every row, column and box holds each digit once; a bidirectional (diffusion)
model can fill the easy, forced cells first, while an AR model must commit in reading order.

Format: row-major digit strings, prompt with '0' for blanks ("530070000..."), target = the solution.
Generator: a random complete grid (randomised backtracking), then cells are blanked in random order, keeping a
blank only while the puzzle keeps exactly one solution (checked by a bitmask solver with the
minimum-remaining-values rule; a blank is kept at once when the cell has a single candidate left). If a pass
ends short of ``blanks``, a fresh grid is tried, up to ``max_tries``. Requests above the known limits (at
least 4 / 8 / 17 givens for 4x4 / 6x6 / 9x9) are refused at once.
Verifier: the answer must be a complete valid grid that agrees with every given; since solutions are unique
this equals exact match with the target, without relying on it (MGDM's metric was exact match only).
Deviations: puzzles are generated, not read from the paper's 1M-puzzle set, so their difficulty differs; the
default number of blanks is ours, not a paper value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmlab.core.config import param
from lmlab.tasks.base import Example, check_generate_args

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # size -> (box rows, box cols)
MIN_GIVENS = {4: 4, 6: 8, 9: 17}  # fewest givens of any uniquely solvable puzzle (known results)


@dataclass
class Config:
    size: int = param(9, "grid side: 4, 6 or 9 (MGDM uses 9)", choices=(4, 6, 9))
    blanks: int = param(45, "blank cells per puzzle, keeping a unique solution (9x9: greedy carving reaches "
                            "53-59, so above ~56 expect retries)")
    max_tries: int = param(50, "complete grids tried per puzzle before giving up (ValueError)")


class Grid:
    """Precomputed geometry of a size x size board: each cell's row, column and box index."""

    def __init__(self, size: int):
        if size not in BOXES:
            raise ValueError(f"sudoku size must be one of {sorted(BOXES)}, got {size!r}")
        bh, bw = BOXES[size]
        self.size, self.cells, self.full = size, size * size, (1 << size) - 1
        self.row = [i // size for i in range(self.cells)]
        self.col = [i % size for i in range(self.cells)]
        self.box = [(i // size // bh) * (size // bw) + (i % size) // bw for i in range(self.cells)]
        self.units = [[i for i in range(self.cells) if key[i] == u] for key in (self.row, self.col, self.box)
                      for u in range(size)]

    def solve(
        self, cells: list[int], limit: int = 2, rng: random.Random | None = None
    ) -> tuple[int, list[int]]:
        """Count solutions of ``cells`` (0 = blank) up to ``limit``; also return the first found ([] if none).

        With ``rng`` the candidate digits are tried in random order (used to draw random complete grids).
        """
        n, row, col, box = self.size, self.row, self.col, self.box
        rows, cols, boxes = [0] * n, [0] * n, [0] * n
        grid = list(cells)
        for i, v in enumerate(grid):
            if v:
                bit = 1 << (v - 1)
                if (rows[row[i]] | cols[col[i]] | boxes[box[i]]) & bit:
                    return 0, []  # the givens already clash
                rows[row[i]] |= bit
                cols[col[i]] |= bit
                boxes[box[i]] |= bit
        todo = [i for i, v in enumerate(grid) if not v]
        first: list[int] = []

        def search(k: int) -> int:
            if k == len(todo):
                if not first:
                    first.extend(grid)
                return 1
            best, best_mask, best_count = k, 0, n + 1  # minimum remaining values
            for j in range(k, len(todo)):
                i = todo[j]
                mask = self.full & ~(rows[row[i]] | cols[col[i]] | boxes[box[i]])
                count = mask.bit_count()
                if count < best_count:
                    best, best_mask, best_count = j, mask, count
                    if count <= 1:
                        break
            if best_count == 0:
                return 0
            todo[k], todo[best] = todo[best], todo[k]
            i = todo[k]
            r, c, b = row[i], col[i], box[i]
            digits = [d for d in range(n) if best_mask >> d & 1]
            if rng is not None:
                rng.shuffle(digits)
            found = 0
            for d in digits:
                bit = 1 << d
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                grid[i] = d + 1
                found += search(k + 1)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
                grid[i] = 0
                if found >= limit:
                    break
            return found

        return search(0), first

    def candidates(self, cells: list[int], i: int) -> list[int]:
        """Digits that cell ``i`` could hold given the filled cells of its row, column and box."""
        seen = {cells[j] for j in range(self.cells) if j != i and (
            self.row[j] == self.row[i] or self.col[j] == self.col[i] or self.box[j] == self.box[i])}
        return [d for d in range(1, self.size + 1) if d not in seen]

    def is_solution(self, cells: list[int]) -> bool:
        digits = set(range(1, self.size + 1))
        return len(cells) == self.cells and all({cells[i] for i in unit} == digits for unit in self.units)


class SudokuTask:
    name = "sudoku"
    blank = "0"  # the prompt is the solution with blanks: the inpainting layout of TaskCodec applies

    def __init__(self, cfg: Config | None = None):
        self.cfg = cfg = cfg if cfg is not None else Config()
        self.grid = Grid(cfg.size)
        most = self.grid.cells - MIN_GIVENS[cfg.size]
        if isinstance(cfg.blanks, bool) or not isinstance(cfg.blanks, int) or not 0 <= cfg.blanks <= most:
            raise ValueError(
                f"sudoku blanks={cfg.blanks!r} is impossible for size {cfg.size}: a unique solution needs "
                f"0 <= blanks <= {most} ({self.grid.cells} cells, at least {MIN_GIVENS[cfg.size]} givens)"
            )
        if cfg.max_tries < 1:
            raise ValueError(f"sudoku max_tries must be >= 1, got {cfg.max_tries}")
        self.alphabet = "0123456789"[: cfg.size + 1]

    def _carve(self, rng: random.Random, solution: list[int]) -> list[int] | None:
        """Blank cells of ``solution`` in random order while the solution stays unique; None if short."""
        g, puzzle, removed = self.grid, list(solution), 0
        order = list(range(g.cells))
        rng.shuffle(order)
        for i in order:
            if removed == self.cfg.blanks:
                break
            puzzle[i] = 0
            alternatives = [d for d in g.candidates(puzzle, i) if d != solution[i]]
            unique = True
            for d in alternatives:  # unique iff no other digit in cell i completes to a solution
                puzzle[i] = d
                if g.solve(puzzle, limit=1)[0]:
                    unique = False
                    break
            puzzle[i] = 0 if unique else solution[i]
            removed += unique
        return puzzle if removed == self.cfg.blanks else None

    def sample(self, rng: random.Random) -> Example:
        g = self.grid
        for _ in range(self.cfg.max_tries):
            _, solution = g.solve([0] * g.cells, limit=1, rng=rng)
            puzzle = self._carve(rng, solution)
            if puzzle is not None:
                prompt, target = "".join(map(str, puzzle)), "".join(map(str, solution))
                return Example(prompt, target, {"blanks": self.cfg.blanks})
        raise ValueError(
            f"sudoku blanks={self.cfg.blanks} (size {self.cfg.size}): no uniquely solvable puzzle found in "
            f"max_tries={self.cfg.max_tries} grids; use fewer blanks or more tries"
        )

    def generate(self, n: int, seed: int) -> list[Example]:
        check_generate_args(n, seed)
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def parse_prompt(self, prompt: str) -> list[int]:
        ok = isinstance(prompt, str) and len(prompt) == self.grid.cells
        if not ok or any(c not in self.alphabet for c in prompt):
            raise ValueError(
                f"sudoku prompt must be {self.grid.cells} characters from {self.alphabet!r}, got {prompt!r}"
            )
        return [int(c) for c in prompt]

    def verify(self, prompt: str, answer: str) -> bool:
        givens = self.parse_prompt(prompt)
        digits = self.alphabet[1:]
        if not isinstance(answer, str) or len(answer) != len(givens) or any(c not in digits for c in answer):
            return False
        cells = [int(c) for c in answer]
        return all(v in (0, c) for v, c in zip(givens, cells)) and self.grid.is_solution(cells)
