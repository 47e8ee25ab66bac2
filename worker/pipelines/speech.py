"""Speech for the ``video`` pipeline's narration: eSpeak NG, as a program or as a wheel's library.

``find_voice()`` picks, in this order:

1. ``espeak-ng`` on PATH (Debian's package, the Docker image): run once per slide;
2. the ``espeakng-loader`` wheel, which ships ``libespeak-ng`` and its voice data: the
   library is called through ctypes (``espeak_Initialize`` in synchronous mode, a
   ``espeak_SetSynthCallback`` that collects the samples, ``espeak_Synth``), so
   ``pip install`` alone gives a narrated video;
3. nothing: ``None``, and the pipeline writes a silent track and says so.

Every voice writes 16-bit mono PCM at ``SAMPLE_RATE`` to a WAV file.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
import wave
from pathlib import Path
from typing import Protocol

SAMPLE_RATE = 22050  # espeak-ng's rate; the silent track uses it too
LIBRARY_NAME = "espeakng-loader"  # the wheel, as a voice's name says it

# espeak-ng's speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1  # espeak_PARAMETER espeakRATE: words per minute
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


class SpeechError(Exception):
    """A voice failed to say a line."""


class Voice(Protocol):
    name: str

    def speak(self, text: str, rate: int, target: Path) -> None:
        """Say ``text`` at ``rate`` words per minute into the WAV file ``target``."""


class ProgramVoice:
    """The ``espeak-ng`` program."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.name = "espeak-ng"

    def speak(self, text: str, rate: int, target: Path) -> None:
        done = subprocess.run(
            [self.program, "--stdin", "-s", str(rate), "-w", str(target)],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0 or not target.exists():
            detail = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
            raise SpeechError(f"espeak-ng failed: {detail}")


class LibraryVoice:
    """``libespeak-ng`` from the espeakng-loader wheel, through ctypes.

    The library keeps one global state per process: one instance per process,
    and a lock around each line.
    """

    _lock = threading.Lock()

    def __init__(self, library_path: str, data_path: str) -> None:
        self.name = LIBRARY_NAME
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if rate != SAMPLE_RATE:
            raise SpeechError(f"libespeak-ng did not start (espeak_Initialize returned {rate})")
        if lib.espeak_SetVoiceByName(b"en") != 0:
            raise SpeechError("libespeak-ng has no English voice in its data")
        self._chunks: list[bytes] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept: the library holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib

    def _collect(self, samples, count: int, _events) -> int:
        if samples and count > 0:
            self._chunks.append(ctypes.string_at(samples, count * 2))
        return 0  # go on

    def speak(self, text: str, rate: int, target: Path) -> None:
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._chunks = []
            self._lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
            code = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8,
                                          None, None)
            if code != 0:
                raise SpeechError(f"libespeak-ng failed to speak (espeak_Synth returned {code})")
            self._lib.espeak_Synchronize()
            pcm = b"".join(self._chunks)
            self._chunks = []
        with wave.open(str(target), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm)


def library_voice() -> LibraryVoice | None:
    """The wheel's library, or None where the wheel is not installed or cannot run here."""
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        return LibraryVoice(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())
    except (OSError, RuntimeError, AttributeError, SpeechError):
        return None


def find_voice() -> Voice | None:
    """``espeak-ng`` on PATH, else the espeakng-loader wheel's library, else None (silence)."""
    program = shutil.which("espeak-ng")
    if program is not None:
        return ProgramVoice(program)
    return library_voice()
