// Model text as Markdown, safely: react-markdown builds React elements from the Markdown syntax tree and,
// without rehype-raw, turns any HTML in the text into plain text, so a `<script>` or `<img onerror>` the
// model writes is shown, never run. Its default urlTransform drops javascript: and other unsafe links.
import ReactMarkdown from "react-markdown";

const COMPONENTS = {
  // Links open elsewhere, without handing this page to the target.
  a: ({ node, ...props }) => <a {...props} target="_blank" rel="noopener noreferrer nofollow" />,
  // No images load from model text: an image URL is a way to send what the model saw to someone's server.
  img: ({ node, src, alt }) => (
    <a href={src} target="_blank" rel="noopener noreferrer nofollow">
      {alt || "image"}
    </a>
  ),
};

export function Markdown({ text }) {
  return <ReactMarkdown components={COMPONENTS}>{text}</ReactMarkdown>;
}
