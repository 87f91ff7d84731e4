// `env.AUTH`: a service binding, a `fetch` into another worker of the host.

const SERVICE_HOST_SUFFIX = ".service.isola.internal";

export class Fetcher {
  #host;
  constructor(binding) {
    this.#host = `${binding.toLowerCase()}${SERVICE_HOST_SUFFIX}`;
  }
  // Async, as every Promise-returning Workers method: a bad URL or init
  // rejects the promise rather than throwing at the call.
  async fetch(input, init) {
    const request = new Request(input, init);
    const url = new URL(request.url);
    url.protocol = "http:";
    url.host = this.#host;
    return fetch(new Request(url, request));
  }
}
