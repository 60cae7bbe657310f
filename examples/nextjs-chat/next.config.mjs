// Keel's gateway stays where `make dev` runs it; the browser only ever talks to this app, which proxies
// /api/* (POST /api/chat, GET /api/chat/{id}/stream, GET /api/runs/{id}, ...) to it. No CORS, no changes
// to the gateway.
const KEEL_URL = process.env.KEEL_URL ?? "http://127.0.0.1:8000";

/** @type {import('next').NextConfig} */
const nextConfig = {
  // The proxy must not compress: a gzip'd event stream is buffered until it ends.
  compress: false,
  async rewrites() {
    return [{ source: "/api/:path*", destination: `${KEEL_URL}/api/:path*` }];
  },
};

export default nextConfig;
