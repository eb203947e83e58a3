// Multi-page build of the web apps; the server serves frontend/dist under /app/.
import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

const root = import.meta.dirname;
// `npm run dev` talks to a local `medikus serve` (signalling and auth on the same origin).
const backend = process.env.MEDIKUS_BACKEND ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/app/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    rollupOptions: {
      input: {
        join: resolve(root, "join.html"),
        consult: resolve(root, "consult.html"),
      },
    },
  },
  server: {
    proxy: {
      "/video/ws": { target: backend.replace(/^http/, "ws"), ws: true },
      "/auth": backend,
      "/fhir": backend,
    },
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
