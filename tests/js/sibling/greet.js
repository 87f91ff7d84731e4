export function greet(name) {
  return `hello ${name} from a sibling module`;
}
