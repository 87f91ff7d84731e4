// What Isola implements of the Workers runtime API beyond the web platform
// (TypeScript's "webworker" lib has Request, Response, fetch, URL, streams,
// crypto, caches, console): the binding kinds, `ctx`, the handlers'
// arguments. An honest subset of @cloudflare/workers-types: what is not
// here, Isola does not do (README, "Writing a worker in JavaScript").

/** `ctx`: work after the response, the pass-through, Isola's locals. */
interface ExecutionContext {
  /** Runs after the response is sent; a failed task is logged. */
  waitUntil(promise: Promise<unknown>): void;
  /** A failed request goes to the worker's `origin` instead of a 500. */
  passThroughOnException(): void;
  /** The request's `x-request-id`. */
  readonly requestId: string;
  /** Request-scoped JSON values that travel through service bindings. */
  readonly locals: {
    get<T = unknown>(key: string): T | undefined;
    set(key: string, value: unknown): void;
  };
}

/** `request.cf` on Isola. */
interface IncomingRequestCfProperties {
  httpProtocol: string;
  requestId: string;
  clientAddress?: string;
  tlsVersion?: string;
  colo?: string;
  country?: string;
}

/** The request a fetch handler gets. */
type IncomingRequest = Request & { readonly cf: IncomingRequestCfProperties };

interface ScheduledController {
  readonly cron: string;
  readonly scheduledTime: number;
  readonly type: "scheduled";
  noRetry(): void;
}

interface QueueRetryOptions {
  delaySeconds?: number;
}

interface Message<Body = unknown> {
  readonly id: string;
  readonly timestamp: Date;
  readonly body: Body;
  readonly attempts: number;
  ack(): void;
  retry(options?: QueueRetryOptions): void;
}

interface MessageBatch<Body = unknown> {
  readonly queue: string;
  readonly messages: readonly Message<Body>[];
  ackAll(): void;
  retryAll(options?: QueueRetryOptions): void;
}

/** What a module worker exports by default (`satisfies ExportedHandler<Env>`). */
interface ExportedHandler<E = unknown, QueueBody = unknown> {
  fetch?(request: IncomingRequest, env: E, ctx: ExecutionContext): Response | Promise<Response>;
  scheduled?(controller: ScheduledController, env: E, ctx: ExecutionContext): void | Promise<void>;
  queue?(batch: MessageBatch<QueueBody>, env: E, ctx: ExecutionContext): void | Promise<void>;
}

// KV

type KVValueType = "text" | "json" | "arrayBuffer" | "stream";

interface KVNamespaceGetOptions<Type extends KVValueType = KVValueType> {
  type: Type;
  /** Accepted and ignored: there is no edge cache in front of KV. */
  cacheTtl?: number;
}

interface KVNamespacePutOptions {
  /** Seconds since the epoch. */
  expiration?: number;
  /** Seconds from now. */
  expirationTtl?: number;
  /** Any JSON value, up to 1 KiB serialized. */
  metadata?: unknown;
}

interface KVNamespaceListOptions {
  prefix?: string | null;
  /** At most 1000. */
  limit?: number;
  cursor?: string | null;
}

interface KVNamespaceListKey<Metadata = unknown, Key extends string = string> {
  name: Key;
  expiration?: number;
  metadata?: Metadata;
}

type KVNamespaceListResult<Metadata = unknown, Key extends string = string> =
  | {
      list_complete: false;
      keys: KVNamespaceListKey<Metadata, Key>[];
      cursor: string;
      cacheStatus: string | null;
    }
  | {
      list_complete: true;
      keys: KVNamespaceListKey<Metadata, Key>[];
      cacheStatus: string | null;
    };

interface KVNamespaceGetWithMetadataResult<Value, Metadata> {
  value: Value | null;
  metadata: Metadata | null;
  cacheStatus: string | null;
}

interface KVNamespace<Key extends string = string> {
  get(key: Key, options?: Partial<KVNamespaceGetOptions<"text">>): Promise<string | null>;
  get(key: Key, type: "text"): Promise<string | null>;
  get<T = unknown>(key: Key, type: "json"): Promise<T | null>;
  get<T = unknown>(key: Key, options: KVNamespaceGetOptions<"json">): Promise<T | null>;
  get(key: Key, type: "arrayBuffer"): Promise<ArrayBuffer | null>;
  get(key: Key, options: KVNamespaceGetOptions<"arrayBuffer">): Promise<ArrayBuffer | null>;
  get(key: Key, type: "stream"): Promise<ReadableStream<Uint8Array> | null>;
  get(key: Key, options: KVNamespaceGetOptions<"stream">): Promise<ReadableStream<Uint8Array> | null>;
  getWithMetadata<Metadata = unknown>(
    key: Key,
    options?: "text" | Partial<KVNamespaceGetOptions<"text">>,
  ): Promise<KVNamespaceGetWithMetadataResult<string, Metadata>>;
  getWithMetadata<T = unknown, Metadata = unknown>(
    key: Key,
    options: "json" | KVNamespaceGetOptions<"json">,
  ): Promise<KVNamespaceGetWithMetadataResult<T, Metadata>>;
  getWithMetadata<Metadata = unknown>(
    key: Key,
    options: "arrayBuffer" | KVNamespaceGetOptions<"arrayBuffer">,
  ): Promise<KVNamespaceGetWithMetadataResult<ArrayBuffer, Metadata>>;
  getWithMetadata<Metadata = unknown>(
    key: Key,
    options: "stream" | KVNamespaceGetOptions<"stream">,
  ): Promise<KVNamespaceGetWithMetadataResult<ReadableStream<Uint8Array>, Metadata>>;
  put(
    key: Key,
    value: string | ArrayBuffer | ArrayBufferView | ReadableStream,
    options?: KVNamespacePutOptions,
  ): Promise<void>;
  delete(key: Key): Promise<void>;
  list<Metadata = unknown>(
    options?: KVNamespaceListOptions,
  ): Promise<KVNamespaceListResult<Metadata, Key>>;
}

// D1

interface D1Meta {
  duration: number;
  rows_read: number;
  rows_written: number;
  last_row_id: number;
  changed_db: boolean;
  changes: number;
  size_after: number;
  served_by: string;
}

interface D1Result<T = Record<string, unknown>> {
  success: true;
  meta: D1Meta & Record<string, unknown>;
  results: T[];
}

interface D1ExecResult {
  count: number;
  duration: number;
}

interface D1PreparedStatement {
  bind(...values: unknown[]): D1PreparedStatement;
  first<T = unknown>(column: string): Promise<T | null>;
  first<T = Record<string, unknown>>(): Promise<T | null>;
  all<T = Record<string, unknown>>(): Promise<D1Result<T>>;
  run<T = Record<string, unknown>>(): Promise<D1Result<T>>;
  raw<T = unknown[]>(options: { columnNames: true }): Promise<[string[], ...T[]]>;
  raw<T = unknown[]>(options?: { columnNames?: false }): Promise<T[]>;
}

interface D1Database {
  prepare(query: string): D1PreparedStatement;
  /** One transaction. */
  batch<T = unknown>(statements: D1PreparedStatement[]): Promise<D1Result<T>[]>;
  exec(query: string): Promise<D1ExecResult>;
}

// R2

interface R2HTTPMetadata {
  contentType?: string;
  contentLanguage?: string;
  contentDisposition?: string;
  contentEncoding?: string;
  cacheControl?: string;
}

type R2Range = { offset: number; length?: number } | { offset?: number; length: number } | { suffix: number };

interface R2Checksums {
  readonly md5?: ArrayBuffer;
}

interface R2Object {
  readonly key: string;
  readonly version: string;
  readonly size: number;
  readonly etag: string;
  readonly httpEtag: string;
  readonly checksums: R2Checksums;
  readonly uploaded: Date;
  readonly httpMetadata?: R2HTTPMetadata;
  readonly customMetadata?: Record<string, string>;
  readonly range?: R2Range;
  readonly storageClass: string;
  writeHttpMetadata(headers: Headers): void;
}

interface R2ObjectBody extends R2Object {
  readonly body: ReadableStream<Uint8Array>;
  readonly bodyUsed: boolean;
  arrayBuffer(): Promise<ArrayBuffer>;
  text(): Promise<string>;
  json<T = unknown>(): Promise<T>;
  blob(): Promise<Blob>;
}

interface R2GetOptions {
  range?: R2Range | Headers;
}

interface R2PutOptions {
  httpMetadata?: R2HTTPMetadata | Headers;
  customMetadata?: Record<string, string>;
}

interface R2ListOptions {
  limit?: number;
  prefix?: string;
  cursor?: string;
  delimiter?: string;
}

type R2Objects = {
  objects: R2Object[];
  delimitedPrefixes: string[];
} & ({ truncated: true; cursor: string } | { truncated: false });

interface R2Bucket {
  head(key: string): Promise<R2Object | null>;
  get(key: string, options?: R2GetOptions): Promise<R2ObjectBody | null>;
  put(
    key: string,
    value: ReadableStream | ArrayBuffer | ArrayBufferView | string | null | Blob,
    options?: R2PutOptions,
  ): Promise<R2Object>;
  delete(keys: string | string[]): Promise<void>;
  list(options?: R2ListOptions): Promise<R2Objects>;
}

// Queues

type QueueContentType = "text" | "bytes" | "json" | "v8";

interface QueueSendOptions {
  contentType?: QueueContentType;
  delaySeconds?: number;
}

interface MessageSendRequest<Body = unknown> {
  body: Body;
  contentType?: QueueContentType;
  delaySeconds?: number;
}

interface QueueSendBatchOptions {
  delaySeconds?: number;
}

interface Queue<Body = unknown> {
  send(message: Body, options?: QueueSendOptions): Promise<void>;
  sendBatch(messages: Iterable<MessageSendRequest<Body>>, options?: QueueSendBatchOptions): Promise<void>;
}

// Service bindings

/** Another worker of the same server, called in-process. */
interface Fetcher {
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
}

// Analytics Engine

interface AnalyticsEngineDataPoint {
  indexes?: ((ArrayBuffer | string) | null)[];
  doubles?: number[];
  blobs?: ((ArrayBuffer | string) | null)[];
}

interface AnalyticsEngineDataset {
  writeDataPoint(event?: AnalyticsEngineDataPoint): void;
}

// The Cache API's `caches.default`.
interface CacheStorage {
  readonly default: Cache;
}

// Durable Objects

/** An object's address in its namespace: 64 hex digits. */
interface DurableObjectId {
  toString(): string;
  equals(other: DurableObjectId): boolean;
  /** The name given to `idFromName`, for ids made from a name. */
  readonly name?: string;
}

/** The methods of the object's class, as calls that return promises. */
type DurableObjectRpc<T> = {
  [K in keyof T as K extends "fetch" | "alarm" | "ctx" | "env" ? never : K]: T[K] extends (
    ...args: infer A
  ) => infer R
    ? (...args: A) => Promise<Awaited<R>>
    : never;
};

/** A stub: `fetch` and RPC reach the object. */
type DurableObjectStub<T = undefined> = {
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  readonly id: DurableObjectId;
  readonly name?: string;
} & (T extends object ? DurableObjectRpc<T> : {});

/** `durable_objects.bindings`: a class's objects. */
interface DurableObjectNamespace<T = undefined> {
  idFromName(name: string): DurableObjectId;
  newUniqueId(): DurableObjectId;
  idFromString(id: string): DurableObjectId;
  get(id: DurableObjectId): DurableObjectStub<T>;
  getByName(name: string): DurableObjectStub<T>;
}

interface DurableObjectListOptions {
  start?: string;
  startAfter?: string;
  end?: string;
  prefix?: string;
  reverse?: boolean;
  limit?: number;
}

interface DurableObjectTransaction {
  get<T = unknown>(key: string): Promise<T | undefined>;
  get<T = unknown>(keys: string[]): Promise<Map<string, T>>;
  put<T>(key: string, value: T): Promise<void>;
  put<T>(entries: Record<string, T>): Promise<void>;
  delete(key: string): Promise<boolean>;
  delete(keys: string[]): Promise<number>;
  list<T = unknown>(options?: DurableObjectListOptions): Promise<Map<string, T>>;
  rollback(): void;
}

type SqlStorageValue = ArrayBuffer | string | number | null;

interface SqlStorageCursor<T extends Record<string, SqlStorageValue>> extends Iterable<T> {
  next(): { done?: false; value: T } | { done: true; value?: never };
  toArray(): T[];
  one(): T;
  raw<U extends SqlStorageValue[]>(): IterableIterator<U>;
  readonly columnNames: string[];
  readonly rowsRead: number;
  readonly rowsWritten: number;
}

/** `ctx.storage.sql`: classes created by `new_sqlite_classes`. */
interface SqlStorage {
  exec<T extends Record<string, SqlStorageValue> = Record<string, SqlStorageValue>>(
    query: string,
    ...bindings: any[]
  ): SqlStorageCursor<T>;
  readonly databaseSize: number;
}

interface DurableObjectStorage extends Omit<DurableObjectTransaction, "rollback"> {
  deleteAll(): Promise<void>;
  transaction<T>(closure: (txn: DurableObjectTransaction) => Promise<T>): Promise<T>;
  transactionSync<T>(closure: () => T): T;
  getAlarm(): Promise<number | null>;
  setAlarm(scheduledTime: number | Date): Promise<void>;
  deleteAlarm(): Promise<void>;
  sync(): Promise<void>;
  readonly sql: SqlStorage;
}

interface DurableObjectState {
  readonly id: DurableObjectId;
  readonly storage: DurableObjectStorage;
  waitUntil(promise: Promise<unknown>): void;
  blockConcurrencyWhile<T>(callback: () => Promise<T>): Promise<T>;
}

interface AlarmInvocationInfo {
  readonly retryCount: number;
  readonly isRetry: boolean;
}

declare module "cloudflare:workers" {
  /** The base of a Durable Object class: `this.ctx` and `this.env`. */
  export abstract class DurableObject<Env = unknown> {
    protected ctx: DurableObjectState;
    protected env: Env;
    constructor(ctx: DurableObjectState, env: Env);
    fetch?(request: Request): Response | Promise<Response>;
    alarm?(alarmInfo?: AlarmInvocationInfo): void | Promise<void>;
  }
}
