// Stands in for the package "some-module" (`alias` in the test's config).
export default function greet(name) {
  return `hello ${name} from the aliased module`;
}
