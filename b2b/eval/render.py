"""Turn piano rolls into things a person can look at and listen to: PNG grids, MIDI files and audio.

Everything here works on one :class:`~b2b.spec.RollSpec`'s grid: ``(tracks, time, pitch)`` rolls whose
pitch column ``i`` is MIDI pitch ``spec.lowest_pitch + i`` and whose ``spec.steps_per_beat`` steps make
one beat. Files are written under a temporary name and renamed, so a reader never sees half a file.

Audio comes from FluidSynth (pyfluidsynth with the system libfluidsynth, playing the General MIDI
soundfont ``TimGM6mb.sf2`` that pretty_midi ships) when it can be loaded. Otherwise, or when
``B2B_SYNTH=fallback`` is set, a small additive synth in this module plays the notes: each pitched note
is a sum of three harmonics with a short attack and an exponential decay, each drum hit a burst of
seeded noise (low drums lower-pass filtered, so kicks thud and hi-hats hiss). It ignores the programs, but
unlike pretty_midi's own sine synth it plays the drum track, and it is deterministic.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pretty_midi
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from b2b.atomic import temporary_path
from b2b.errors import B2BError, ShapeError
from b2b.spec import RollSpec

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Environment variable that forces the fallback synth ("fallback") or FluidSynth ("fluidsynth").
SYNTH_ENV = "B2B_SYNTH"
VELOCITY = 100


def note_name(pitch: int) -> str:
    """MIDI pitch number to scientific pitch name (60 -> ``C4``)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _check_rolls(rolls: np.ndarray, spec: RollSpec, ndim: int, what: str) -> np.ndarray:
    rolls = np.asarray(rolls)
    expected = spec.shape if ndim == 3 else ("N", *spec.shape)
    if rolls.ndim != ndim or rolls.shape[ndim - 3 :] != spec.shape:
        raise ShapeError(f"{what}: expected a roll of shape {expected}, got {rolls.shape}")
    return rolls


# ---------------------------------------------------------------------------------------------------
# Pictures


def track_colours(n_tracks: int) -> np.ndarray:
    """``(n_tracks, 3)`` RGB colours, distinct for up to 20 tracks (matplotlib's tab20, reordered)."""
    from matplotlib import colormaps

    # tab10's strong colours first, then tab20's light ones, so small track counts stay vivid.
    order = [2 * i for i in range(10)] + [2 * i + 1 for i in range(10)]
    tab20 = colormaps["tab20"]
    return np.array([to_rgb(tab20(order[i % 20])) for i in range(n_tracks)])


def roll_image(roll: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Composite one ``(C, T, P)`` roll (bool or [0, 1]) into a ``(P, T, 3)`` RGB image on white.

    Tracks are laid over each other in track order, each with its value as opacity, so a later track
    covers an earlier one where both play.
    """
    alpha = np.clip(np.asarray(roll, dtype=np.float32), 0.0, 1.0)
    image = np.ones((roll.shape[2], roll.shape[1], 3), dtype=np.float32)
    for c in range(roll.shape[0]):
        a = alpha[c].T[..., None]
        image = image * (1.0 - a) + colours[c] * a
    return image


def save_roll_grid(
    rolls: np.ndarray,
    spec: RollSpec,
    path: str | Path,
    title: str | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Draw samples as piano rolls, one panel each, tracks overlaid in labelled colours; write a PNG.

    Parameters
    ----------
    rolls : np.ndarray
        ``(N, C, T, P)`` bool, or float in [0, 1] (shown as opacity, so probabilities fade in).
    spec : RollSpec
        The rolls' grid: track names for the legend, bar lines every ``steps_per_bar`` steps, and the
        pitch axis (labelled with the C of each octave, e.g. ``C4``).
    path : str or Path
        The image file (its suffix picks the format; ``.png`` is usual). Parent folders are created.
    title : str, optional
        Written above the panels.
    labels : list of str, optional
        One title per panel (default ``sample <i>``; none for a single panel, which the title names).

    Returns
    -------
    Path
        ``path``, written atomically.
    """
    rolls = _check_rolls(rolls, spec, 4, "save_roll_grid")
    n = rolls.shape[0]
    n_cols = min(max(n, 1), 4)
    n_rows = max(1, -(-n // n_cols))
    colours = track_colours(len(spec.tracks))
    _, n_steps, n_pitches = spec.shape
    low = spec.lowest_pitch

    fig = Figure(figsize=(4.2 * n_cols, 2.8 * n_rows + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    c_pitches = [p for p in range(low, low + n_pitches) if p % 12 == 0]
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        # Pitch p is drawn as the band p-0.5 .. p+0.5, time step t as t .. t+1.
        ax.imshow(
            roll_image(rolls[i], colours),
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            extent=(0, n_steps, low - 0.5, low + n_pitches - 0.5),
        )
        for bar in range(1, spec.n_bars):
            ax.axvline(bar * spec.steps_per_bar, color="black", linewidth=0.9)
        ax.set_xticks([bar * spec.steps_per_bar for bar in range(spec.n_bars)])
        ax.set_xticklabels([f"bar {bar + 1}" for bar in range(spec.n_bars)], fontsize=7, ha="left")
        ax.set_yticks(c_pitches)
        ax.set_yticklabels([note_name(p) for p in c_pitches], fontsize=7)
        if labels is not None:
            ax.set_title(labels[i], fontsize=8)
        elif n > 1:  # a single panel is named by the title
            ax.set_title(f"sample {i}", fontsize=8)
    handles = [Patch(color=colours[c], label=t.name) for c, t in enumerate(spec.tracks)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_rows = -(-len(handles) // 6)
    fig.tight_layout(rect=(0, 0.04 * legend_rows / n_rows + 0.02, 1, 0.95 if title else 1))

    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure atomically (format from the suffix, PNG without one); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


# ---------------------------------------------------------------------------------------------------
# MIDI


def note_runs(track: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Notes of one ``(T, P)`` bool track: runs of consecutive on-steps at one pitch.

    A note starts at a step that is on where the previous step is off (or at step 0) and ends at the
    first off step after it (or at ``T``).

    Returns
    -------
    pitch_index, start, end : np.ndarray
        Integer arrays of equal length, sorted by pitch then start; ``end`` is exclusive.
    """
    padded = np.zeros((track.shape[1], track.shape[0] + 2), dtype=np.int8)
    padded[:, 1:-1] = track.T
    change = np.diff(padded, axis=1)
    pitch_index, start = np.nonzero(change == 1)
    _, end = np.nonzero(change == -1)  # row-major order pairs every onset with its own offset
    return pitch_index, start, end


def roll_to_midi(roll: np.ndarray, spec: RollSpec, tempo: float = 100.0) -> pretty_midi.PrettyMIDI:
    """A multi-track MIDI file of one roll.

    Parameters
    ----------
    roll : np.ndarray
        ``(C, T, P)`` bool (binarize generated rolls first, e.g. ``probs >= 0.9``).
    spec : RollSpec
        Track programs and drum flags, pitch offset and steps per beat.
    tempo : float
        Beats per minute; one step lasts ``60 / tempo / spec.steps_per_beat`` seconds.

    Returns
    -------
    pretty_midi.PrettyMIDI
        One instrument per non-empty track, named after it, with its program; drum tracks have
        ``is_drum=True`` (written on MIDI channel 10). Notes have velocity 100.
    """
    roll = _check_rolls(roll, spec, 3, "roll_to_midi")
    if roll.dtype != bool:
        raise B2BError(
            f"roll_to_midi expects a bool roll, got dtype {roll.dtype}; binarize first (roll >= threshold)"
        )
    if not tempo > 0:
        raise B2BError(f"tempo must be > 0 beats per minute, got {tempo}")
    step_seconds = 60.0 / tempo / spec.steps_per_beat
    midi = pretty_midi.PrettyMIDI(initial_tempo=float(tempo))
    for track, spec_track in zip(roll, spec.tracks, strict=True):
        pitch_index, start, end = note_runs(track)
        if not len(start):
            continue
        instrument = pretty_midi.Instrument(
            program=spec_track.program, is_drum=spec_track.is_drum, name=spec_track.name
        )
        for p, s, e in zip(pitch_index.tolist(), start.tolist(), end.tolist(), strict=True):
            instrument.notes.append(
                pretty_midi.Note(VELOCITY, spec.lowest_pitch + p, s * step_seconds, e * step_seconds)
            )
        instrument.notes.sort(key=lambda note: (note.start, note.pitch))
        midi.instruments.append(instrument)
    return midi


def save_midi(roll: np.ndarray, spec: RollSpec, path: str | Path, tempo: float = 100.0) -> Path:
    """Write :func:`roll_to_midi` of ``roll`` to ``path`` (atomically); return the path."""
    return write_midi(roll_to_midi(roll, spec, tempo), path)


def write_midi(midi: pretty_midi.PrettyMIDI, path: str | Path) -> Path:
    """Write ``midi`` to ``path`` (atomically); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(path) as tmp:
        midi.write(str(tmp))
    return path


# ---------------------------------------------------------------------------------------------------
# Audio


def fluidsynth_available() -> bool:
    """Whether pyfluidsynth and the system libfluidsynth can be loaded."""
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        # pyfluidsynth raises ImportError when libfluidsynth is missing; some builds raise OSError.
        return False
    return True


def _fallback_synth(midi: pretty_midi.PrettyMIDI, sample_rate: int) -> np.ndarray:
    length = int(np.ceil((midi.get_end_time() + 0.3) * sample_rate)) if midi.instruments else 0
    audio = np.zeros(length, dtype=np.float64)
    attack = max(1, int(0.005 * sample_rate))
    for instrument in midi.instruments:
        for note in instrument.notes:
            begin = int(round(note.start * sample_rate))
            if instrument.is_drum:
                # Noise burst; pitches below 50 (kicks, low toms) are smoothed into a thud.
                n = min(int(0.25 * sample_rate), length - begin)
                t = np.arange(n) / sample_rate
                noise = np.random.default_rng(note.pitch).standard_normal(n)
                if note.pitch < 50:
                    noise = np.convolve(noise, np.ones(32) / 8, mode="same")
                wave_ = 0.5 * noise * np.exp(-t / (0.08 if note.pitch < 50 else 0.04))
            else:
                # Held for the note, then a 50 ms release; three harmonics, gently decaying.
                n = min(int(round((note.end - note.start + 0.05) * sample_rate)), length - begin)
                t = np.arange(n) / sample_rate
                freq = 440.0 * 2.0 ** ((note.pitch - 69) / 12.0)
                wave_ = sum(np.sin(2 * np.pi * k * freq * t) / k for k in (1, 2, 3)) / 1.8
                wave_ *= np.exp(-t / 1.5)
                duration = note.end - note.start
                wave_ *= np.clip((duration + 0.05 - t) / 0.05, 0.0, 1.0)
            wave_[: min(attack, n)] *= np.linspace(0.0, 1.0, min(attack, n))
            audio[begin : begin + n] += (note.velocity / 127.0) * wave_
    return audio


def synthesize(
    midi: pretty_midi.PrettyMIDI, sample_rate: int = 22050, synth: str = "auto"
) -> tuple[np.ndarray, str]:
    """Render MIDI to mono audio.

    Parameters
    ----------
    midi : pretty_midi.PrettyMIDI
        The music (e.g. from :func:`roll_to_midi`).
    sample_rate : int
        Samples per second.
    synth : {"auto", "fluidsynth", "fallback"}
        ``auto`` uses FluidSynth when it can be loaded and the fallback synth otherwise; the
        environment variable ``B2B_SYNTH`` (``fluidsynth`` or ``fallback``) overrides ``auto``.

    Returns
    -------
    audio : np.ndarray
        float32 samples, peak-normalized to 0.9 (silence stays zeros), so within [-1, 1].
    synth : str
        ``"fluidsynth"`` or ``"fallback"``: the synth that played it.
    """
    if synth == "auto":
        synth = os.environ.get(SYNTH_ENV, "auto") or "auto"
    if synth not in ("auto", "fluidsynth", "fallback"):
        raise B2BError(f"synth (or ${SYNTH_ENV}) must be auto, fluidsynth or fallback, got {synth!r}")
    if synth == "auto":
        synth = "fluidsynth" if fluidsynth_available() else "fallback"
    if synth == "fluidsynth" and not fluidsynth_available():
        raise B2BError(
            "synth 'fluidsynth' needs pyfluidsynth and libfluidsynth "
            "(pip install pyfluidsynth; apt-get install libfluidsynth3); use 'fallback' or 'auto'"
        )
    if synth == "fluidsynth" and midi.instruments:
        # pretty_midi plays its bundled TimGM6mb.sf2 when sf2_path is None.
        audio = np.asarray(midi.fluidsynth(fs=sample_rate), dtype=np.float64)
    elif synth == "fluidsynth":
        audio = np.zeros(0)
    else:
        audio = _fallback_synth(midi, sample_rate)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0:
        audio = audio * (0.9 / peak)
    return audio.astype(np.float32), synth


def phrase_audio(
    midi: pretty_midi.PrettyMIDI,
    spec: RollSpec,
    tempo: float = 100.0,
    sample_rate: int = 22050,
    synth: str = "auto",
) -> tuple[np.ndarray, str]:
    """:func:`synthesize` ``midi``, padded with silence to the whole phrase (a silent roll gives a silent
    clip of the phrase's length, never an empty one). Returns the audio and the synth used."""
    audio, used = synthesize(midi, sample_rate, synth)
    frames = int(np.ceil(spec.shape[1] * 60.0 / tempo / spec.steps_per_beat * sample_rate))
    return np.pad(audio, (0, max(0, frames - len(audio)))), used


def save_wav(audio: np.ndarray, sample_rate: int, path: str | Path) -> Path:
    """Write mono float audio in [-1, 1] as a 16-bit PCM WAV file (atomically); return the path."""
    path = Path(path)
    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1.0, 1.0) * 32767).round().astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return path
