// The browser only ever talks to this app; app/api/[...path]/route.js forwards /api/* (POST /api/chat,
// GET /api/chat/{id}/stream, GET /api/runs/{id}, ...) to Keel's gateway, reading KEEL_URL at run time.

/** @type {import('next').NextConfig} */
const nextConfig = {
  // A gzip'd event stream is held back until it ends: the proxied UI message stream must stay uncompressed.
  compress: false,
  poweredByHeader: false,
};

export default nextConfig;
