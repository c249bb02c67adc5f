// Builds the viewer into dist/viewer/, which Django serves as static files at /static/viewer/
// (config/settings.py adds frontend/dist to STATICFILES_DIRS; `make frontend` runs this).
import { defineConfig } from "vite";

export default defineConfig({
  // Workers, WebAssembly codecs and chunks are fetched relative to where Django serves them.
  base: "/static/viewer/",
  build: {
    cssCodeSplit: false,
    outDir: "dist/viewer",
    emptyOutDir: true,
    // Cornerstone's codecs are large; their size is not a problem on a LAN workstation.
    chunkSizeWarningLimit: 4096,
    rollupOptions: {
      input: "src/main.ts",
      output: {
        // A fixed name for the entry, so the Django template can name it; the rest is hashed.
        entryFileNames: "viewer.js",
        chunkFileNames: "chunks/[name]-[hash].js",
        // The stylesheet too has a fixed name; codecs (.wasm) and workers are hashed.
        assetFileNames: (asset) =>
          asset.names.some((name) => name.endsWith(".css")) ? "viewer.css" : "assets/[name]-[hash][extname]",
      },
    },
  },
  // The DICOM decoders run in module workers.
  worker: { format: "es" },
});
