"""mode=import, deactivate and complete: imports run in a background thread, any worker answers.

1C repeats ``mode=import`` until it hears ``success`` or ``failure``; a big catalog takes longer
than any HTTP timeout, so the first call starts a thread and every call answers from the
session's state file. The thread beats every few seconds: a job whose beat stops (its worker was
restarted or killed) is reported as failed instead of leaving 1C polling forever. Its store run
rolled back with the process, so nothing of it was saved.

Archives (zip=yes): 1C sends the last chunk of an archive without saying so, so archives are
extracted when the session first needs them, i.e. on ``mode=import``: of a file that one of the
archives brings, or of the archive itself (then every XML inside is imported, import* before
offers*, prices* and rests*).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from core.clock import utc_now
from core.mailbox import EXCHANGE, Mailbox
from core.settings import ExchangeSettings
from exchange.catalog_import import deactivate_untouched, import_file
from exchange.cml import CommerceMLError
from exchange.sessions import DEAD_IMPORT_SECONDS, ExchangeSession, Refused, files_summary
from exchange.uploads import UploadError, archive_names, extract_archive, target_path
from store import ExchangeLog, StoreBusy, open_catalog

log = logging.getLogger(__name__)

BEAT_SECONDS = 2.0
STALE_SECONDS = DEAD_IMPORT_SECONDS
XML_ORDER = ("import", "offers", "prices", "rests")


# An import waits this long for a MoySklad sync or another import to commit (1C meanwhile hears "progress").
IMPORT_WAIT_SECONDS = 900


def request_import(session: ExchangeSession, name: str, store_path: Path, images_dir: Path, *,
                   log_path: Path, mailbox: Mailbox, limits: ExchangeSettings) -> list[str]:
    """Answer one ``mode=import`` call: start the job the first time, then report on it; a job that
    changed the catalog asks the scheduler (through the mailbox) to rebuild the exchange feeds."""
    with session.state() as state:
        job = state["imports"].get(name)
        if job is None:
            busy = [other for other, j in state["imports"].items() if j["status"] == "running"]
            if busy:
                raise Refused(f"дождитесь окончания загрузки {busy[0]}")
            steps = _plan(session, state, name)
            job = state["imports"][name] = {"status": "running", "started": utc_now(), "beat": time.time(),
                                            "progress": f"начата загрузка {name}"}
            threading.Thread(target=_run, args=(session, name, steps, store_path, images_dir, log_path, mailbox, limits),
                             name=f"exchange-import-{session.id}", daemon=True).start()
            log.info("exchange session %s: import of %s started (%s)", session.id, name,
                     ", ".join(f"{kind} {arg}" for kind, arg in steps))
        elif job["status"] == "running" and time.time() - job["beat"] > STALE_SECONDS:
            job.update(status="failed", error=f"загрузка {name} прервалась (процесс сервера остановился); "
                                              "ничего из неё не сохранено, повторите обмен")
    return _answer(job)


def _answer(job: dict) -> list[str]:
    if job["status"] == "running":
        return ["progress", job["progress"]]
    if job["status"] == "ok":
        return ["success"]
    return ["failure", job["error"]]


def _plan(session: ExchangeSession, state: dict, name: str) -> list[tuple[str, str]]:
    """The steps that import ``name``: extract the pending archives, then import the XML files."""
    pending = [archive for archive, status in state["zips"].items() if status == "pending"]
    if name in state["zips"]:
        steps = [("extract", name)] if name in pending else []
        inside = archive_names(target_path(session.upload_dir, name))
        xml = sorted((n for n in inside if n.lower().endswith(".xml") and "/" not in n), key=_xml_rank)
        if not xml:
            raise Refused(f"в архиве {name} нет файлов XML для загрузки")
        return steps + [("import", n) for n in xml]
    path = target_path(session.upload_dir, name)
    brought = any(name in archive_names(target_path(session.upload_dir, archive)) for archive in pending)
    if not path.is_file() and not brought:
        raise Refused(f"файл {name} не был загружен в этом сеансе (сначала mode=file)")
    return [("extract", archive) for archive in pending] + [("import", name)]


def _xml_rank(name: str) -> tuple[int, str]:
    lower = name.lower()
    ranks = [i for i, prefix in enumerate(XML_ORDER) if lower.startswith(prefix)]
    return (ranks[0] if ranks else len(XML_ORDER), name)


class _Beat:
    """Writes the job's progress text and a heartbeat to the state file every BEAT_SECONDS."""

    def __init__(self, session: ExchangeSession, name: str):
        self.session, self.name, self.file = session, name, name
        self.text = f"начата загрузка {name}"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"exchange-beat-{session.id}", daemon=True)
        self.thread.start()

    def progress(self, count: int) -> None:
        """The parser's progress callback: items processed so far in the current file."""
        self.text = f"{count} позиций обработано ({self.file})"

    def _loop(self) -> None:
        while not self.done.wait(BEAT_SECONDS):
            with self.session.state() as state:
                state["imports"][self.name].update(beat=time.time(), progress=self.text)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _run(session: ExchangeSession, name: str, steps: list[tuple[str, str]], store_path: Path, images_dir: Path,
         log_path: Path, mailbox: Mailbox, limits: ExchangeSettings) -> None:
    """The job: extract and import, then record the outcome in the state file and the session log."""
    beat = _Beat(session, name)
    try:
        outcome = {"status": "ok", "results": _steps(session, steps, store_path, images_dir, beat, limits)}
    except BaseException as exc:  # noqa: BLE001 — whatever happens, 1C must hear a failure, not poll forever
        outcome = {"status": "failed", "error": _reason(name, exc)}
    finally:
        beat.stop()
    with session.state() as state:
        state["imports"][name].update(outcome, finished=utc_now())
    log.info("exchange session %s: import of %s %s", session.id, name,
             "done" if outcome["status"] == "ok" else f"failed: {outcome['error']}")
    if outcome["status"] == "ok":
        mailbox.post(EXCHANGE)  # debounced by the scheduler: the session's next file may follow at once
    values = {"files": files_summary(state), "bytes": state["bytes"]}
    error = outcome.get("error") or state["failure"]
    if error:
        values.update(result="failed", error=error)
    with ExchangeLog(log_path) as log_store:
        log_store.update_session(session.id, **values)


def _steps(session: ExchangeSession, steps, store_path: Path, images_dir: Path, beat: _Beat,
           limits: ExchangeSettings) -> list[dict]:
    results = []
    with open_catalog(store_path, wait_seconds=IMPORT_WAIT_SECONDS) as store:
        for kind, name in steps:
            path = target_path(session.upload_dir, name)
            if kind == "extract":
                beat.text = f"распаковка архива {name}"
                files = extract_archive(session, name, limits)
                with session.state() as state:
                    state["zips"][name] = f"extracted {files} files"
                continue
            beat.file = name
            earlier = catalog_runs(session.read_state()) + [r["run_id"] for r in results]
            result = import_file(store, path, upload_dir=session.upload_dir, images_dir=images_dir, progress=beat.progress,
                                 session_first_run=min(earlier, default=None))
            results.append({"file": name, "kind": result.kind, "counts": result.counts, "run_id": result.run_id,
                            "document": result.root_attributes})
    return results


def catalog_runs(state: dict) -> list[int]:
    """The store runs of the session's catalog files imported so far (an order status file, also kept with the
    session's imports, has counts instead)."""
    return [result["run_id"] for job in state["imports"].values()
            if job["status"] == "ok" and isinstance(job.get("results"), list) for result in job["results"]]


def _reason(name: str, exc: BaseException) -> str:
    """The failure text 1C shows for an exception of the job."""
    if isinstance(exc, (CommerceMLError, UploadError)):
        return str(exc)
    if isinstance(exc, StoreBusy):
        return "каталог сейчас загружается другим обменом; повторите обмен позже"
    log.error("exchange: import of %s failed", name, exc_info=exc)
    return f"внутренняя ошибка сервера при загрузке {name}; подробности в журнале сервера"


def deactivate(session: ExchangeSession, store_path: Path, mailbox: Mailbox) -> None:
    """mode=deactivate: what this session's imports did not touch becomes inactive (never deleted).

    Refused while an import runs or after one failed: deactivating after a broken import would
    take the whole catalog off sale (the parser itself skips a session that imported nothing).
    """
    state = session.read_state()
    statuses = {job["status"] for job in state["imports"].values()}
    if "running" in statuses:
        raise Refused("импорт ещё идёт: деактивация возможна после его окончания")
    if "failed" in statuses:
        raise Refused("деактивация пропущена: импорт в этом сеансе завершился с ошибкой")
    with open_catalog(store_path, wait_seconds=IMPORT_WAIT_SECONDS) as store:
        counts = deactivate_untouched(store, catalog_runs(state))
    log.info("exchange session %s: deactivated %s", session.id, counts)
    if any(counts.values()):
        mailbox.post(EXCHANGE, urgent=True)


def complete(session: ExchangeSession, log_store: ExchangeLog, mailbox: Mailbox | None = None) -> None:
    """mode=complete: close the session, log its outcome and free its uploads. A catalog session that
    imported something (``mailbox`` given) has its exchange feeds rebuilt at once, without the debounce."""
    state = session.read_state()
    if any(job["status"] == "running" for job in state["imports"].values()):
        raise Refused("импорт ещё идёт: дождитесь его окончания")
    failed = state["failure"] or any(job["status"] == "failed" for job in state["imports"].values())
    log_store.update_session(session.id, finished_at=utc_now(), result="failed" if failed else "ok",
                             files=files_summary(state), bytes=state["bytes"])
    session.close()
    log.info("exchange session %s: complete", session.id)
    if mailbox is not None and any(job["status"] == "ok" for job in state["imports"].values()):
        mailbox.post(EXCHANGE, urgent=True)
