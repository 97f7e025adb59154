"""Past one machine: two instances, each owning some accounts, behind one nginx configured with
deploy/nginx-shards.conf and the map `flask --app app shards nginx-map` prints from their configs.
Every feed, account's pictures, webhook and the 1C exchange reach the instance that owns them."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import requests
from lxml import etree

from core.settings import ConfigError, load_settings
from core.shards import nginx_map, shard_routes
from emulator.harness import EMULATOR_TOKEN, ROOT, Gunicorn, free_port, wait_for
from tests.exchange.test_exchange import LOGIN, PASSWORD, OneC
from tests.feeds.test_serving_under_load import nginx_binary  # noqa: F401 (a fixture)

HOOK_A, HOOK_B = "client-a-hook-0123456789", "client-b-hook-0123456789"


def instance_config(name: str, base_url: str, public_url: str, body: str) -> str:
    account = (f"  - name: client-{name}\n    moysklad: {{base_url: '{base_url}', token: '{EMULATOR_TOKEN}-{name}'}}\n"
               f"    feeds: [{{name: shop-{name}, pictures: cache, interval_minutes: 600}}]\n"
               f"    webhook_secret: client-{name}-hook-0123456789\n")
    return (f"data_dir: data\npublic_url: {public_url}\nproxy_hops: 1\nmoysklad: {{base_url: '{base_url}', "
            f"token: '{EMULATOR_TOKEN}'}}\n{body}accounts:\n{account}")


def deploy_block(name: str) -> str:
    text = (ROOT / "deploy" / "nginx-shards.conf").read_text(encoding="utf-8")
    return re.search(rf"# {name} begin\n(.*?)\n\s*# {name} end", text, re.DOTALL).group(1)


@pytest.fixture
def two_instances(tmp_path, emulator_factory, nginx_binary):  # noqa: F811
    emulator = emulator_factory(products=30, other_tokens=(f"{EMULATOR_TOKEN}-a", f"{EMULATOR_TOKEN}-b"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    configs = {
        "a": instance_config("a", emulator.base_url, base,
                             "feeds: [{name: main-a, pictures: none, interval_minutes: 600}]\n"
                             f"exchange: {{login: {LOGIN}, password: {PASSWORD}}}\n"),
        "b": instance_config("b", emulator.base_url, f"{base}/_shard/b", ""),  # its main account has no feeds
    }
    servers = {}
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        servers[name] = Gunicorn(tmp_path / name, config, workers=1)
    printed = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "shards", "nginx-map",
                              *(f"{name}={server.config}" for name, server in servers.items())],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "SKLADBRIDGE_CONFIG": str(servers["a"].config)})
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "shards.map").write_text(printed.stdout, encoding="utf-8")
    upstreams = "".join(f"upstream {name} {{ server 127.0.0.1:{server.port}; keepalive 4; }}\n"
                        for name, server in servers.items())
    user = "user root root;\n" if os.geteuid() == 0 else ""
    routing = deploy_block("routing").replace("/etc/nginx/skladbridge-shards.map", str(tmp_path / "shards.map"))
    (tmp_path / "nginx.conf").write_text(
        f"{user}daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/nginx-error.log;\n"
        f"events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n"
        f"  client_body_temp_path {tmp_path}/nb;\n  proxy_temp_path {tmp_path}/np;\n  fastcgi_temp_path {tmp_path}/f;\n"
        f"  uwsgi_temp_path {tmp_path}/u;\n  scgi_temp_path {tmp_path}/s;\n{routing}\n{upstreams}"
        f"  server {{\n    listen 127.0.0.1:{port};\n{deploy_block('shard locations')}\n  }}\n}}\n", encoding="utf-8")
    checked = subprocess.run([nginx_binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    proxy = subprocess.Popen([nginx_binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: published(base, ("main-a", "shop-a", "shop-b")), 120, "every feed published through nginx")
        yield base, printed.stdout
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        for server in servers.values():
            server.stop()


def published(base: str, feeds: tuple[str, ...]) -> bool:
    try:
        return all(requests.get(f"{base}/feeds/{feed}.xml", timeout=5).status_code == 200 for feed in feeds)
    except requests.ConnectionError:  # nginx not listening yet
        return False


def test_two_instances_behind_one_nginx_serve_each_account_from_its_owner(two_instances):
    base, printed_map = two_instances
    assert HOOK_A in printed_map and "0640" in printed_map  # the map holds secrets and says so
    pictures = {}
    for feed in ("main-a", "shop-a", "shop-b"):
        reply = requests.get(f"{base}/feeds/{feed}.xml", timeout=10)
        offers = etree.fromstring(reply.content).findall(".//offer")
        assert reply.status_code == 200 and offers, feed
        pictures[feed] = [picture.text for picture in etree.fromstring(reply.content).iter("picture")]
    assert requests.get(f"{base}/feeds/nobody.xml", timeout=10).status_code == 404

    # Pictures: client-a's at /images/client-a/, client-b's under its instance's prefix, and unprefixed too.
    assert pictures["shop-a"] and all(p.startswith(f"{base}/images/client-a/") for p in pictures["shop-a"])
    assert pictures["shop-b"] and all(p.startswith(f"{base}/_shard/b/images/client-b/") for p in pictures["shop-b"])
    for url in (pictures["shop-a"][0], pictures["shop-b"][0], pictures["shop-b"][0].replace("/_shard/b", "")):
        reply = requests.get(url, timeout=10)
        assert reply.status_code == 200 and reply.content[:3] in (b"\xff\xd8\xff", b"\x89PN"), url
    assert requests.get(pictures["shop-a"][0].replace("client-a", "nobody"), timeout=10).status_code == 404

    # Webhooks reach the account's instance (the other one would answer 404), a wrong secret nobody.
    event = {"events": [{"meta": {"type": "product"}, "action": "UPDATE"}]}
    for secret in (HOOK_A, HOOK_B):
        assert requests.post(f"{base}/webhooks/moysklad/{secret}", json=event, timeout=10).json()["rebuild"] is True
    assert requests.post(f"{base}/webhooks/moysklad/wrong-secret-0123456789", json=event, timeout=10).status_code == 404

    # 1C's exchange goes to the instance that has one; each instance's own pages under its prefix.
    assert OneC(base).checkauth()[0] == "success"
    page = requests.get(f"{base}/_shard/b/", timeout=30)
    assert page.status_code == 200 and 'id="feed-shop-b"' in page.text and 'id="feed-main-a"' not in page.text
    assert 'action="/_shard/b/health/build/shop-b"' in page.text  # the button posts back through its prefix
    assert "skladbridge_feed_state" in requests.get(f"{base}/_shard/a/metrics", timeout=30).text
    assert requests.get(f"{base}/_shard/c/", timeout=10).status_code == 404


def test_a_url_two_instances_claim_is_refused_naming_both(tmp_path):
    configs = {}
    for name in ("a", "b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(instance_config(name, "https://api.moysklad.ru/api/remap/1.2", "https://feed.example.ru",
                                        "feeds: [{name: main-" + name + "}]\n"), encoding="utf-8")
        configs[name] = load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"main account with feeds .* in both instance a and instance b: set public_url"):
        shard_routes(configs)
    moved = tmp_path / "b.yaml"
    moved.write_text(moved.read_text().replace("public_url: https://feed.example.ru", "public_url: https://feed.example.ru/_shard/b"))
    configs["b"] = load_settings(moved, environ={})
    routes = shard_routes(configs)
    assert routes["images:"] == "a" and routes["feed:main-b"] == "b" and routes["images:client-b"] == "b"
    assert '"webhook:client-b-hook-0123456789" b;' in nginx_map(routes)

    # X-Accel-Redirect needs the files on the nginx that answers: the front one has none of an instance's
    configs["b"] = dataclasses.replace(configs["b"], accel_redirect="/_skladbridge_data/")
    with pytest.raises(ConfigError, match=r"^instance b: accel_redirect \(/_skladbridge_data/\) .* leave accel_redirect unset"):
        shard_routes(configs)


def test_the_map_is_printed_from_any_folder_reading_only_the_configs_it_names(tmp_path):
    from tests.test_first_day import flask

    good = tmp_path / "a.yaml"
    good.write_text(instance_config("a", "https://api.moysklad.ru/api/remap/1.2", "https://feed.example.ru",
                                    "feeds: [{name: main-a}]\n"), encoding="utf-8")
    (tmp_path / "empty").mkdir()  # no config here: the local instance would be the demo
    (tmp_path / "copied").mkdir()  # a copied example config still without its token
    (tmp_path / "copied" / "config.yaml").write_text((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    for folder in ("empty", "copied"):
        printed = flask(tmp_path / folder, "shards", "nginx-map", f"a={good}")
        assert printed.returncode == 0 and printed.stderr == "", printed.stderr
        assert '"feed:main-a" a;' in printed.stdout and HOOK_A in printed.stdout
        assert not (tmp_path / folder / "demo-data").exists() and not (tmp_path / folder / "data").exists()

    missing = flask(tmp_path / "copied", "shards", "nginx-map", f"a={good}:{tmp_path / 'nonexist.env'}")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.splitlines() == [
        f"Error: instance a: cannot read {tmp_path / 'nonexist.env'}: No such file or directory"]
