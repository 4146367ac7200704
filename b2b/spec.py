"""What one training sample is: its tracks and its grid of time steps and pitches.

A :class:`RollSpec` travels with the data (``manifest.json``), the config, checkpoints and exported
generators, so a sample can always be turned back into MIDI with the right instruments and tempo grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from b2b.errors import ShapeError


@dataclass(frozen=True)
class Track:
    """One instrument track: a channel of the sample."""

    name: str
    program: int = 0
    is_drum: bool = False


# LPD-17's tracks, in LPD's order (family = program // 8, drums separate).
LPD17_TRACKS: tuple[Track, ...] = (
    Track("Drums", 0, True),
    Track("Piano", 0),
    Track("Chromatic Percussion", 8),
    Track("Organ", 16),
    Track("Guitar", 24),
    Track("Bass", 32),
    Track("Strings", 40),
    Track("Ensemble", 48),
    Track("Brass", 56),
    Track("Reed", 64),
    Track("Pipe", 72),
    Track("Synth Lead", 80),
    Track("Synth Pad", 88),
    Track("Synth Effects", 96),
    Track("Ethnic", 104),
    Track("Percussive", 112),
    Track("Sound Effects", 120),
)

# LPD-5's tracks, in LPD's order.
LPD5_TRACKS: tuple[Track, ...] = (
    Track("Drums", 0, True),
    Track("Piano", 0),
    Track("Guitar", 24),
    Track("Bass", 32),
    Track("Strings", 48),
)

# The demo corpus: Bach chorales, one track per voice (all played on a church organ).
CHORALE_TRACKS: tuple[Track, ...] = (
    Track("Soprano", 19),
    Track("Alto", 19),
    Track("Tenor", 19),
    Track("Bass", 19),
)


@dataclass(frozen=True)
class RollSpec:
    """A fixed window of a multi-track piano roll.

    Parameters
    ----------
    tracks : tuple of Track
        One entry per channel.
    n_bars, steps_per_bar, beats_per_bar : int
        The time grid: ``n_bars * steps_per_bar`` steps, ``steps_per_bar // beats_per_bar`` per beat.
    n_pitches, lowest_pitch : int
        The pitch axis covers MIDI pitches ``lowest_pitch .. lowest_pitch + n_pitches - 1``.
    """

    tracks: tuple[Track, ...] = field(default=LPD17_TRACKS)
    n_bars: int = 4
    steps_per_bar: int = 48
    beats_per_bar: int = 4
    n_pitches: int = 84
    lowest_pitch: int = 24

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(tracks, time, pitch)``: the shape of one sample."""
        return (len(self.tracks), self.n_bars * self.steps_per_bar, self.n_pitches)

    @property
    def steps_per_beat(self) -> int:
        return self.steps_per_bar // self.beats_per_bar

    def check(self) -> RollSpec:
        """Raise :class:`ShapeError` naming the first impossible field; return ``self`` otherwise."""
        if not self.tracks:
            raise ShapeError("a roll needs at least one track")
        for name in ("n_bars", "steps_per_bar", "beats_per_bar", "n_pitches"):
            if getattr(self, name) < 1:
                raise ShapeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_bar % self.beats_per_bar:
            raise ShapeError(
                f"steps_per_bar ({self.steps_per_bar}) must be a multiple of beats_per_bar "
                f"({self.beats_per_bar}) so that every beat has the same number of steps"
            )
        if not 0 <= self.lowest_pitch <= 127:
            raise ShapeError(f"lowest_pitch must be a MIDI pitch in 0..127, got {self.lowest_pitch}")
        if self.lowest_pitch + self.n_pitches > 128:
            raise ShapeError(
                f"lowest_pitch + n_pitches = {self.lowest_pitch} + {self.n_pitches} = "
                f"{self.lowest_pitch + self.n_pitches} exceeds MIDI's 128 pitches (0..127); "
                f"lower n_pitches to at most {max(0, 128 - self.lowest_pitch)}"
            )
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tracks"] = [asdict(t) for t in self.tracks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RollSpec:
        d = dict(d)
        d["tracks"] = tuple(Track(**t) for t in d["tracks"])
        return cls(**d)


def spec_difference(a: RollSpec, b: RollSpec) -> str:
    """The fields in which two specs differ, e.g. ``shape [4, 64, 48] vs [17, 64, 48]; tracks ...``."""
    parts = []
    if a.shape != b.shape:
        parts.append(f"shape {list(a.shape)} vs {list(b.shape)}")
    if [t.name for t in a.tracks] != [t.name for t in b.tracks]:
        parts.append(f"tracks {[t.name for t in a.tracks]} vs {[t.name for t in b.tracks]}")
    for name in ("steps_per_bar", "beats_per_bar", "lowest_pitch"):
        if getattr(a, name) != getattr(b, name):
            parts.append(f"{name} {getattr(a, name)} vs {getattr(b, name)}")
    return "; ".join(parts) or "programs or drum flags differ"
