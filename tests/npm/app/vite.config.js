// The scratch project of tests/npm/run.sh. `mpa`: a missing file is a 404 (the package's
// 'fetch' error is tested), not the SPA fallback page.
export default {
  appType: 'mpa',
  build: { target: 'es2022' },
  plugins: [
    {
      name: 'gguf-uncompressed',
      // `vite preview` gzips files of unknown type on the fly, without a Content-Length; serve
      // models as a CDN does (whole, with their length) so the progress total is tested.
      configurePreviewServer(server) {
        server.middlewares.use((req, _res, next) => {
          if (req.url?.split('?')[0].endsWith('.gguf')) delete req.headers['accept-encoding'];
          next();
        });
      },
    },
  ],
};
