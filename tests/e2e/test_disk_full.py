"""The disk fills up: the new feed cannot be written, the old one stays served, the health page says
why, no temp files are left, and once there is room again the next build publishes."""

from __future__ import annotations

import resource
import signal
import subprocess

import pytest

pytestmark = pytest.mark.e2e

NO_SPACE = "На диске закончилось место"


def file_size_limit(limit: int):
    """For preexec_fn: files may not grow past ``limit`` bytes (``ulimit -f``); a write past it fails
    with EFBIG instead of killing the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_keeps_the_old_feed_served_and_says_why(site):
    shop = site(products=200, seed=41, feeds_disk="512k")  # the feeds directory on a 512 KB tmpfs
    before = shop.published() if shop.wait_published() else b""
    for number in range(2500):  # a catalog whose feed (about 2 MB) no longer fits
        shop.emulator.catalog.add_product(name=f"Новинка {number}", price_kopecks=99000.0)

    if shop.disk:
        banner = shop.build_now()  # the scheduler inside gunicorn: sync, render, and the write fails
        assert banner.endswith(f"не удалась: {NO_SPACE}. Прежний файл продолжает раздаваться."), banner
        failure = "[Errno 28] No space left on device"
        feed = shop.assert_kept(before, NO_SPACE)
        assert feed["error"]["text"].startswith(failure), feed["error"]
        done = shop.cli_build("main", "--no-sync")  # the operator retries by hand: the same, said plainly
    else:  # mounting is not permitted here: the same write error injected with a file-size limit
        assert shop.cli("moysklad", "sync").wait(timeout=180) == 0
        done = shop.cli_build("main", "--no-sync", preexec_fn=file_size_limit(1 << 20))
        failure = "[Errno 27] File too large"
        assert shop.assert_kept(before, NO_SPACE)["error"]["text"].startswith(failure)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"FAILED, the previous file stays published: cannot write the feed file in {shop.feeds_dir}: {failure}" \
        in done.stderr
    assert shop.published() == before and not shop.leftovers()

    if shop.disk:  # room again
        subprocess.run(["mount", "-o", "remount,size=64m", str(shop.disk)], check=True)
    assert "завершена: опубликовано" in shop.build_now()
    assert shop.served().count(b"<offer ") > before.count(b"<offer ") + 2000
    assert shop.feed_health()["state"] == "fresh" and not shop.leftovers()
