// The site offline: on install, cache the files site.json lists under "offline"; afterwards ask the network
// first (so a rebuilt site is seen at once), keep a copy of every answer, and answer from the copies when
// the network is gone.
const PREFIX = "fm-edge-web-";

async function currentBuild() {
  const site = await (await fetch("site.json", { cache: "no-store" })).json();
  return { site, name: PREFIX + site.build };
}

// the copy made at install (activate deletes older ones)
async function currentName() {
  const names = (await caches.keys()).filter((key) => key.startsWith(PREFIX));
  return names[names.length - 1] ?? `${PREFIX}runtime`;
}

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const { site, name } = await currentBuild();
      await (await caches.open(name)).addAll(site.offline);
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      try {
        const { name } = await currentBuild();
        for (const key of await caches.keys()) {
          if (key.startsWith(PREFIX) && key !== name) await caches.delete(key);
        }
      } catch {
        // offline: keep every copy until the next visit online
      }
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  if (event.request.method !== "GET" || new URL(event.request.url).origin !== location.origin) return;
  event.respondWith(
    (async () => {
      try {
        const response = await fetch(event.request);
        if (response.ok && response.status === 200) {
          const copy = response.clone();
          event.waitUntil(
            currentName().then((name) => caches.open(name)).then((cache) => cache.put(event.request, copy)),
          );
        }
        return response;
      } catch (err) {
        const hit = await caches.match(event.request, { ignoreSearch: true });
        if (hit) return hit;
        throw err;
      }
    })(),
  );
});
