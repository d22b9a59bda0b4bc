"""`LoadedOnce`: one object per key per process, made once even when threads ask together."""

import threading
import time

from stagegraph.loaded_once import LoadedOnce


def test_threads_asking_together_get_the_one_object_made_once():
    loaded, made = LoadedOnce(), []

    def make():
        made.append(1)
        time.sleep(0.05)  # a slow load: the other threads ask meanwhile
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(loaded.get("model", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(made) == 1 and len(got) == 8 and all(g is got[0] for g in got)
    assert loaded.get("other", object) is not got[0]


def test_a_maker_may_load_another_object_through_the_same_registry():
    loaded = LoadedOnce()
    assembler = loaded.get("assembler", lambda: ("assembler", loaded.get("tokenizer", lambda: "tok")))
    assert assembler == ("assembler", "tok") and loaded.get("tokenizer", lambda: "other") == "tok"
